"""The control plane's routes: pools and their health, drain and reload, capabilities,
liveness and readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestratord import api_models as api
from orchestratord.api.http import json_response, parse
from orchestratord.service import Orchestrator


def routes(svc: Orchestrator, openapi: dict[str, Any]) -> list[web.RouteDef]:
    async def list_pools(request: web.Request) -> web.Response:
        return json_response(svc.pool_list())

    async def get_pool(request: web.Request) -> web.Response:
        return json_response(svc.pool_info(request.match_info["pool_id"]))

    async def pool_health(request: web.Request) -> web.Response:
        return json_response(svc.pool_health(request.match_info["pool_id"]))

    async def drain(request: web.Request) -> web.Response:
        pool_id = request.match_info["pool_id"]
        svc.pool(pool_id)  # 404 before the body is read
        body = await parse(request, api.DrainRequest, optional=True)
        svc.drain(pool_id, body.deadline_ms)
        return json_response(api.Accepted(pool_id=pool_id, status="draining"), 202)

    async def reload(request: web.Request) -> web.Response:
        pool_id = request.match_info["pool_id"]
        svc.pool(pool_id)
        body = await parse(request, api.ReloadRequest)
        svc.reload(pool_id, body.model)
        return json_response(api.Accepted(pool_id=pool_id, status="reloading"), 202)

    async def capabilities(request: web.Request) -> web.Response:
        return json_response(svc.capabilities())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = svc.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(svc.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_document(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    return [
        web.get("/v1/pools", list_pools),
        web.get("/v1/pools/{pool_id}", get_pool),
        web.get("/v1/pools/{pool_id}/health", pool_health),
        web.post("/v1/pools/{pool_id}/drain", drain),
        web.post("/v1/pools/{pool_id}/reload", reload),
        web.get("/v1/capabilities", capabilities),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/openapi.json", openapi_document),
    ]
