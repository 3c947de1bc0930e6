"""The aiohttp application: the middleware every request passes (connection limits; the
answer budget, `api.answers`; correlation id and error envelopes — OpenAI-shaped on the
OpenAI door —; access control, `api.access`) and the routes of the data plane, the control
plane and the OpenAI-compatible door."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from uuid_utils import uuid7

from orchestrator_core.errors import ErrorCode
from orchestratord.api import batch_api, control_plane, data_plane, openai_door, provider_states
from orchestratord.api.access import access_control, is_loopback
from orchestratord.api.answers import ANSWERS, LARGE, AnswerBudget, refusal, whole_answer
from orchestratord.api.bodies import BODIES, BodyBudget
from orchestratord.api.connections import connection_limits
from orchestratord.api.errors import code_for_http, error_response, refusal_response
from orchestratord.api.http import (
    CID,
    CORRELATION,
    MAX_CORRELATION_CHARS,
    REQUEST_ID,
    TASK_ID,
    Handler,
    Middleware,
    checked_header,
)
from orchestratord.api.openapi import document
from orchestratord.api.standby import leader_gate
from orchestratord.api_models import ErrorEnvelope
from orchestratord.keyring import KeyRing
from orchestratord.service import Orchestrator, Refusal

log = structlog.get_logger("orchestratord.http")


@web.middleware
async def answer_budget(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Write a large answer against the answer budget (`api.answers`), or answer 503
    `OVERLOADED` in its place, with its correlation id and task id."""
    answer = await handler(request)
    whole = whole_answer(answer)
    if whole is None or whole[1] < LARGE:
        return answer
    if await request.app[ANSWERS].send(request, *whole):
        return answer
    refused = refusal_response(refusal(), openai=openai_door.is_openai_path(request.path))
    for name in (CORRELATION, REQUEST_ID, TASK_ID):
        if name in answer.headers:
            refused.headers[name] = answer.headers[name]
    return refused


def correlation_and_errors(max_body: int) -> Middleware:
    """Echo or assign X-Correlation-Id (on OpenAI's paths also as `x-request-id`); turn
    every failure into the error envelope; never let a traceback reach a client."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        openai = openai_door.is_openai_path(request.path)
        cid = str(uuid7())
        request[CID] = cid
        try:
            # an unusable id is refused (and a fresh one echoed), never logged as sent
            cid = request[CID] = checked_header(request, CORRELATION, MAX_CORRELATION_CHARS) or cid
            response = await handler(request)
        except Refusal as refusal:
            response = refusal_response(refusal, openai=openai)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            message = e.reason
            if e.status == 413:
                message = f"request body too large (limit {max_body} bytes)"
            elif e.status == 404 and request.match_info.http_exception is not None:  # no route
                message = f"nothing is served at {request.method} {request.path}; " + (
                    f"the OpenAI API here: {openai_door.SERVED}"
                    if openai
                    else "the API: GET /openapi.json"
                )
            elif e.status == 405:
                message = (
                    f"{request.method} is not allowed on {request.path}; "
                    f"allowed: {e.headers.get('Allow', '')}"
                )
            envelope = ErrorEnvelope.of(code_for_http(e.status), message)
            response = error_response(envelope, e.status, openai=openai)
            if "Allow" in e.headers:  # 405 says what is allowed
                response.headers["Allow"] = e.headers["Allow"]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error", path=request.path, correlation_id=cid)
            envelope = ErrorEnvelope.of(ErrorCode.INTERNAL, "internal error")
            response = error_response(envelope, 500, openai=openai)
        if not response.prepared:
            response.headers[CORRELATION] = cid
            if openai:
                response.headers[REQUEST_ID] = cid
        return response

    return middleware


def build_app(
    service: Orchestrator, keys: KeyRing | None = None, leading: Callable[[], bool] | None = None
) -> web.Application:
    """The application; `keys`: the API keys (None: none configured); `leading`: whether
    this daemon still certainly leads (None: it is the only one)."""
    server = service.config.server
    ring = keys or KeyRing()
    access = access_control(ring, loopback=is_loopback(server.host))
    middlewares: list[Any] = [
        connection_limits,
        answer_budget,
        correlation_and_errors(server.max_body_bytes),
    ]
    if leading is not None:
        middlewares.append(leader_gate(leading))
    middlewares.append(access)
    app = web.Application(client_max_size=server.max_body_bytes, middlewares=middlewares)
    app[BODIES] = bodies = BodyBudget(server.body_buffer_bytes, server.max_body_bytes)
    app[ANSWERS] = answers = AnswerBudget(server.answer_buffer_bytes)
    service.metrics.watch_bodies(lambda: bodies.held, lambda: answers.held)
    app.add_routes(data_plane.routes(service))
    app.add_routes(openai_door.routes(service))
    app.add_routes(batch_api.routes(service))
    app.add_routes(control_plane.routes(service, document(), ring))
    if server.enable_test_endpoints:
        app.add_routes(provider_states.routes(service))
    return app
