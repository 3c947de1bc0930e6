"""HTTP while this daemon does not lead (`orchestratord.leadership`): the standby's own small
application, and the gate in front of the leader's for the moments its lease is in doubt.

A standby is alive (`/healthz` 200) but not ready (`/readyz` 503, so a load balancer or a
Kubernetes Service sends clients to the leader), scraped (`/metrics`: `leader 0`); every
other request answers 503
`NOT_LEADER` naming the leader's URL, in the body (`leader_url`, absent when unknown) and in
the `X-Orchestratord-Leader` header, which the OpenAI door's error shape cannot carry.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator_core.errors import ErrorCode
from orchestratord.api.errors import error_response
from orchestratord.api.http import Handler, Middleware
from orchestratord.api.openai_door import is_openai_path
from orchestratord.api_models import LEADER_HEADER, ErrorEnvelope
from orchestratord.telemetry import Metrics


def not_leader(request: web.Request, leader_url: str | None) -> web.Response:
    """503 `NOT_LEADER` for `request`, in its door's error shape."""
    where = f"the leader is at {leader_url}" if leader_url else "the leader is not known yet"
    envelope = ErrorEnvelope.of(
        ErrorCode.NOT_LEADER, f"this orchestratord stands by; {where}", retry_after_ms=1000
    )
    envelope.leader_url = leader_url
    response = error_response(envelope, 503, 1000, openai=is_openai_path(request.path))
    if leader_url:
        response.headers[LEADER_HEADER] = leader_url
    return response


def leader_gate(leading: Callable[[], bool]) -> Middleware:
    """The leader's application refuses everything but `/healthz` once its lease is in
    doubt (a leader woken after a pause, before it steps down)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if leading() or request.path == "/healthz":
            return await handler(request)
        return not_leader(request, None)

    return middleware


def standby_app(leader_url: Callable[[], str | None], metrics: Metrics) -> web.Application:
    """The standby's application; `leader_url`: where the leader is, as last seen;
    `metrics`: what it exposes while it stands by (`leader` 0)."""

    async def scrape(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": "standby"})

    async def readyz(request: web.Request) -> web.Response:
        body = {"ready": False, "role": "standby", "leader_url": leader_url()}
        return web.json_response(body, status=503)

    async def anything(request: web.Request) -> web.Response:
        return not_leader(request, leader_url())

    app = web.Application()
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", scrape),
            web.route("*", "/{tail:.*}", anything),
        ]
    )
    return app
