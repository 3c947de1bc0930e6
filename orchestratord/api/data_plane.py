"""The data plane's routes: admit tasks, follow them (SSE with `Last-Event-ID` resume),
read their status, cancel them; sessions."""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord import api_models as api
from orchestratord.api.errors import gone
from orchestratord.api.http import CID, CORRELATION, json_response, parse
from orchestratord.service import Orchestrator, Refusal, StreamGap

_SSE_HEADERS = {
    "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
}  # fmt: skip


def _last_event_id(request: web.Request) -> int | None:
    last = request.headers.get("Last-Event-ID")
    if last is None:
        return None
    try:
        return int(last)
    except ValueError:
        raise Refusal(
            ErrorCode.INVALID_PARAMS, "Last-Event-ID must be an integer", field="Last-Event-ID"
        ) from None


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def submit(request: web.Request) -> web.Response:
        req = await parse(request, api.TaskRequest)
        tenant = request.headers.get("X-Tenant-Id", "default")[:64]
        admitted = svc.submit(req, tenant=tenant, correlation_id=request[CID])
        response = json_response(admitted, 202)
        response.headers["Location"] = f"/v1/tasks/{admitted.task_id}"
        return response

    async def status(request: web.Request) -> web.Response:
        return json_response(svc.status(request.match_info["task_id"]))

    async def cancel(request: web.Request) -> web.Response:
        svc.cancel(request.match_info["task_id"])
        return web.Response(status=204)

    async def stream(request: web.Request) -> web.StreamResponse:
        frames = svc.events(request.match_info["task_id"], _last_event_id(request))
        try:
            first = await anext(frames, None)
        except StreamGap as gap:
            return gone(str(gap))
        response = web.StreamResponse(headers={**_SSE_HEADERS, CORRELATION: request[CID]})
        await response.prepare(request)
        try:
            if first is not None:
                await response.write(first)
            async for chunk in frames:
                await response.write(chunk)
        except StreamGap as gap:
            envelope = api.ErrorEnvelope.of(ErrorCode.INTERNAL, f"reader fell behind: {gap}")
            await response.write(f"event: error\ndata: {envelope.model_dump_json()}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            return response  # the client went away; the task carries on
        await response.write_eof()
        return response

    async def get_session(request: web.Request) -> web.Response:
        return json_response(svc.session(request.match_info["session_id"]))

    async def delete_session(request: web.Request) -> web.Response:
        svc.delete_session(request.match_info["session_id"])
        return web.Response(status=204)

    return [
        web.post("/v1/tasks", submit),
        web.get("/v1/tasks/{task_id}", status),
        web.get("/v1/tasks/{task_id}/stream", stream),
        web.post("/v1/tasks/{task_id}/cancel", cancel),
        web.get("/v1/sessions/{session_id}", get_session),
        web.delete("/v1/sessions/{session_id}", delete_session),
    ]
