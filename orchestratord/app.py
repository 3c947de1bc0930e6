"""The HTTP API (aiohttp): data plane, SSE streams, control plane, health and metrics."""

from __future__ import annotations

import asyncio
import hmac
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from orchestrator_core.errors import ErrorCode
from orchestratord import api_models as api
from orchestratord.openapi import document
from orchestratord.service import ApiError, Orchestrator
from orchestratord.streams import StreamGap

log = structlog.get_logger("orchestratord.http")

SERVICE: web.AppKey[Orchestrator] = web.AppKey("service", Orchestrator)
MAX_BODY: web.AppKey[int] = web.AppKey("max_body", int)
BACKGROUND: web.AppKey[set[asyncio.Task[None]]] = web.AppKey("background", set)
CID: web.RequestKey[str] = web.RequestKey("cid", str)
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)
CORRELATION = "X-Correlation-Id"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_CODES = {
    400: ErrorCode.INVALID_PARAMS,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_PARAMS,
    413: ErrorCode.INVALID_PARAMS,
    415: ErrorCode.INVALID_PARAMS,
}


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        body=model.model_dump_json(), status=status, content_type="application/json"
    )


def _error(
    status: int, envelope: api.ErrorEnvelope, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=envelope.model_dump_json(exclude_none=True),
        status=status,
        headers=headers,
        content_type="application/json",
    )


@web.middleware
async def correlation_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echo or assign X-Correlation-Id; turn every failure into the error envelope; never
    let a traceback reach a client."""
    cid = request.headers.get(CORRELATION) or str(uuid.uuid4())
    request[CID] = cid
    try:
        response = await handler(request)
    except ApiError as e:
        response = _error(e.status, e.envelope, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _STATUS_CODES.get(e.status, ErrorCode.INTERNAL)
        message = e.reason
        if e.status == 413:
            message = f"request body too large (limit {request.app[MAX_BODY]} bytes)"
        response = _error(e.status, api.ErrorEnvelope(code=code.value, message=message))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error", path=request.path, correlation_id=cid)
        response = _error(
            500,
            api.ErrorEnvelope(
                code=ErrorCode.INTERNAL.value, message="internal error", retriable=True
            ),
        )
    if not response.prepared:
        response.headers[CORRELATION] = cid
    return response


M = TypeVar("M", bound=BaseModel)


def require_key(key: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Bearer-key auth for the API routes (compared in constant time)."""
    expected = f"Bearer {key}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise ApiError(
                    401,
                    ErrorCode.UNAUTHORIZED,
                    "missing or wrong API key (Authorization: Bearer <key>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    return auth


async def _parse(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    body = await request.read()
    if not body and optional:
        body = b"{}"
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        if err["type"] == "json_invalid":
            raise ApiError(400, ErrorCode.INVALID_PARAMS, f"malformed JSON: {err['msg']}") from None
        raise ApiError(400, ErrorCode.INVALID_PARAMS, f"{loc}: {err['msg']}", field=loc) from None


# -- data plane ----------------------------------------------------------------------


async def submit(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    req = await _parse(request, api.TaskRequest)
    tenant = request.headers.get("X-Tenant-Id", "default")[:64]
    admitted = svc.submit(req, tenant=tenant, correlation_id=request[CID])
    response = _json(admitted, 202)
    response.headers["Location"] = f"/v1/tasks/{admitted.task_id}"
    return response


async def task_status(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE].status(request.match_info["task_id"]))


async def cancel(request: web.Request) -> web.Response:
    request.app[SERVICE].cancel(request.match_info["task_id"])
    return web.Response(status=204)


async def stream(request: web.Request) -> web.StreamResponse:
    rec = request.app[SERVICE].get(request.match_info["task_id"])
    last = request.headers.get("Last-Event-ID")
    after: int | None = None
    if last is not None:
        try:
            after = int(last)
        except ValueError:
            raise ApiError(
                400,
                ErrorCode.INVALID_PARAMS,
                "Last-Event-ID must be an integer",
                field="Last-Event-ID",
            ) from None
    reader = rec.stream.read(after)
    try:
        first = await anext(reader, None)
    except StreamGap as gap:
        raise ApiError(410, ErrorCode.NOT_FOUND, str(gap)) from None
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no", CORRELATION: request[CID],
    })  # fmt: skip
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
        async for chunk in reader:
            await response.write(chunk)
    except StreamGap as gap:
        msg = api.ErrorEnvelope(
            code=ErrorCode.INTERNAL.value, retriable=True, message=f"reader fell behind: {gap}"
        )
        await response.write(f"event: error\ndata: {msg.model_dump_json()}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        return response  # the client went away; the task carries on
    await response.write_eof()
    return response


async def get_session(request: web.Request) -> web.Response:
    return _json(request.app[SERVICE].session(request.match_info["session_id"]))


async def delete_session(request: web.Request) -> web.Response:
    request.app[SERVICE].delete_session(request.match_info["session_id"])
    return web.Response(status=204)


# -- control plane -------------------------------------------------------------------


async def list_pools(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    return _json(api.PoolList(pools=[svc.pool_info(p) for p in svc.pools.values()]))


async def get_pool(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    return _json(svc.pool_info(svc.pool(request.match_info["pool_id"])))


async def pool_health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    pool = svc.pool(request.match_info["pool_id"])
    total, busy = pool.slot_counts()
    return _json(api.PoolHealth(
        live=True, ready=pool.manager.ready, draining=pool.draining,
        metrics={"queue_depth": len(pool.queue), "slots_total": total, "slots_busy": busy,
                 "running": len(pool.running)},
    ))  # fmt: skip


async def drain(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    pool = svc.pool(request.match_info["pool_id"])
    body = await _parse(request, api.DrainRequest, optional=True)
    svc.drain(pool, body.deadline_ms)
    return _json(api.Accepted(pool_id=pool.id, status="draining"), 202)


async def reload(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    pool = svc.pool(request.match_info["pool_id"])
    body = await _parse(request, api.ReloadRequest)
    tasks = request.app[BACKGROUND]
    task = asyncio.create_task(svc.reload(pool, body.model))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return _json(api.Accepted(pool_id=pool.id, status="reloading"), 202)


async def capabilities(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    engines: dict[tuple[str, str], api.EngineCapability] = {}
    for pool in svc.pools.values():
        versions = {r.engine_version for r in pool.manager.replicas if r.engine_version} or {""}
        for version in sorted(versions):
            cap = engines.setdefault(
                (pool.config.engine, version),
                api.EngineCapability(
                    engine=pool.config.engine, engine_version=version, pools=[], ctx_max=None
                ),
            )
            cap.pools.append(pool.id)
            ctx = pool.ctx_max()
            if ctx is not None:
                cap.ctx_max = max(cap.ctx_max or 0, ctx)
    return _json(api.CapabilitiesResponse(
        engines=list(engines.values()),
        features=["sse", "last-event-id", "priorities", "drop-lru", "tenant-fairness",
                  "session-affinity", "determinism-strict", "drain", "reload"],
    ))  # fmt: skip


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    ready = svc.accepting and any(p.manager.ready for p in svc.pools.values())
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[SERVICE].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


def build_app(service: Orchestrator) -> web.Application:
    server = service.config.server
    max_body = server.max_body_bytes
    middlewares: list[Any] = [correlation_and_errors]
    if server.api_key_env:
        key = os.environ.get(server.api_key_env)
        if not key:
            raise RuntimeError(f"server.api_key_env: ${server.api_key_env} is not set")
        middlewares.append(require_key(key))
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    app[SERVICE] = service
    app[MAX_BODY] = max_body
    app[BACKGROUND] = set()
    app.router.add_post("/v1/tasks", submit)
    app.router.add_get("/v1/tasks/{task_id}", task_status)
    app.router.add_get("/v1/tasks/{task_id}/stream", stream)
    app.router.add_post("/v1/tasks/{task_id}/cancel", cancel)
    app.router.add_get("/v1/sessions/{session_id}", get_session)
    app.router.add_delete("/v1/sessions/{session_id}", delete_session)
    app.router.add_get("/v1/pools", list_pools)
    app.router.add_get("/v1/pools/{pool_id}", get_pool)
    app.router.add_get("/v1/pools/{pool_id}/health", pool_health)
    app.router.add_post("/v1/pools/{pool_id}/drain", drain)
    app.router.add_post("/v1/pools/{pool_id}/reload", reload)
    app.router.add_get("/v1/capabilities", capabilities)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app[OPENAPI] = document()
    if service.config.server.enable_test_endpoints:
        from orchestratord.provider_states import mount

        mount(app)
    return app
