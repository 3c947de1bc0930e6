"""Answering with a task's stream: one writer for every door (native two-request and
one-request streams, OpenAI `stream: true`, Last-Event-ID resume).

It answers at once — headers, then the queue position if the task waits — and, whenever
`stream_heartbeat_s` passes with nothing to send, an SSE comment (the position again while
queued), so clients and proxies never time out on a healthy task. It counts as a reader of
the task (`Orchestrator.reading`): a task whose stream is its request's answer is canceled
when its client goes away for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord.api.http import CID, CORRELATION
from orchestratord.api.sse import Renderer, comment
from orchestratord.api_models import ErrorEnvelope
from orchestratord.service import Orchestrator, StreamGap
from orchestratord.service.tasks import TaskRecord

SSE_HEADERS = {
    "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
}  # fmt: skip


def _pause(svc: Orchestrator, rec: TaskRecord) -> bytes:
    position = svc.queue_position(rec)
    return comment("keep-alive" if position is None else f"queued position={position}")


async def stream_task(
    request: web.Request,
    svc: Orchestrator,
    rec: TaskRecord,
    render: Renderer,
    *,
    after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Write `rec`'s events after `after` as SSE until its end (StreamGap, raised before
    any byte, when they are no longer retained)."""
    rec.stream.check_resume(after)
    events = rec.stream.read(after, idle_s=svc.config.server.stream_heartbeat_s)
    response = web.StreamResponse(
        headers={**SSE_HEADERS, CORRELATION: request[CID], **(headers or {})}
    )
    with svc.reading(rec):
        await response.prepare(request)
        try:
            if svc.queue_position(rec) is not None:
                await response.write(_pause(svc, rec))
            async for batch in events:
                await response.write(render(batch) if batch else _pause(svc, rec))
        except StreamGap as gap:  # this reader fell behind the retained events
            envelope = ErrorEnvelope.of(ErrorCode.INTERNAL, f"reader fell behind: {gap}")
            await response.write(render.error(envelope))
        except (ConnectionResetError, asyncio.CancelledError):
            return response  # the client went away (`reading` decides about the task)
    await response.write_eof()
    return response
