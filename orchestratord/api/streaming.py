"""Answering with a task's stream: one writer for every door (native two-request and
one-request streams, OpenAI `stream: true`, Last-Event-ID resume).

It answers at once — headers, then the queue position if the task waits — and, whenever
`stream_heartbeat_s` passes with nothing to send, an SSE comment (the position again while
queued), so clients and proxies never time out on a healthy task. Its first event carries
`retry:` (how soon an EventSource reconnects; a frame of its own would be dispatched as an
empty event by common client libraries). It counts as a reader of the task
(`Orchestrator.reading`): a task whose stream is its request's answer is canceled when its
client goes away for good.

Once its first frames are out, a reader that has caught up follows the task (`_Follower`):
its tokens are written from the engine's read callback, not by a task woken per token. A
reader that is behind (a resume) catches up a piece at a time (`PIECE_EVENTS`).

A reader that takes none of what is written to it for `write_timeout_s` (its client stopped
reading) is disconnected by its connection (`GuardedHandler`: a timer only while the
transport's writing is paused, never one per write); one that falls behind the retained
events gets an error event and is ended. Either way it lets go of the task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from functools import partial

import structlog
from aiohttp import web

from orchestratord.api.connections import GuardedHandler
from orchestratord.api.errors import stream_gap
from orchestratord.api.http import CID, CORRELATION
from orchestratord.api.sse import Renderer, comment
from orchestratord.api_models import MetricsEvent
from orchestratord.service import Orchestrator, StreamGap
from orchestratord.service.records import TaskRecord
from orchestratord.service.streams import END, ERROR, Event, TaskStream
from orchestratord.telemetry import tracing

log = structlog.get_logger("orchestratord.http")

#: `retry:` (ms) with a stream's first event: reconnect soon, resuming with Last-Event-ID.
RETRY = b"retry: 1000\n"

_ENDINGS = (END, ERROR)

#: Events rendered and written at once, at most. A reader catching up on a long stream (a
#: resume, a late reader) writes it a piece at a time, each once its client has taken all
#: but a high-water mark of the last: its connection holds a piece, not the stream
#: (256 OpenAI chunks of short tokens are some 50 KB).
PIECE_EVENTS = 256

SSE_HEADERS = {
    "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
}  # fmt: skip


class _SseResponse(web.StreamResponse):
    """An SSE answer whose headers go out with its first frame, in one send, when one is
    ready at once (`stream_task` sends them alone otherwise): aiohttp sends a
    StreamResponse's headers on their own at `prepare` unless the response opts into
    buffering them (its `Response` does), which costs a system call and a wake-up of the
    client per stream."""

    _send_headers_immediately = False


class _Follower:
    """The push of a caught-up reader (`TaskStream.read`): the tokens of each engine read
    rendered where the read hands them over, and all of one loop pass written together at
    its end — no reader wake-up, task step or awaited write per read. It declines (the
    reader's task then takes over, awaiting the client as before) until the reader's first
    frames are out (`ready`: they carry `retry:` and wait for the journal), and whenever
    the client has not taken everything written so far. When the task ended in the same
    read, the reader's task (woken for the ending) writes what it holds with the ending and
    the body's end, in one write."""

    __slots__ = (
        "_chunked", "_flush", "_held", "_loop", "_render", "_stream", "_transport", "ready",
        "writes",
    )  # fmt: skip

    def __init__(
        self, transport: asyncio.Transport, chunked: bool, render: Renderer, stream: TaskStream
    ) -> None:
        self._transport, self._chunked, self._render = transport, chunked, render
        self._stream = stream
        #: Writes made (the reader's span counts them with its own).
        self.writes = 0
        self._held: list[bytes] = []
        self._flush: asyncio.Handle | None = None
        # kept: Python 3.11's get_running_loop() makes a getpid() system call each time,
        # and this one would run per engine read
        self._loop = asyncio.get_running_loop()
        self.ready = False

    def __call__(self, events: list[Event]) -> bool:
        transport = self._transport
        if not self.ready or transport.is_closing() or transport.get_write_buffer_size():
            return False
        self._held.append(self._render(events))
        if self._flush is None:
            self._flush = self._loop.call_soon(self._write)
        return True

    def take(self) -> bytes:
        """What was rendered and is not written yet (the reader's task sends it before
        anything of its own, or drops it when it ends)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        held = b"".join(self._held)
        self._held.clear()
        return held

    def _write(self) -> None:
        self._flush = None
        if self._stream.closed:  # the reader's task, woken for the ending, takes it along
            return
        data = b"".join(self._held)
        self._held.clear()
        if self._transport.is_closing():  # the reader learns it with its next write
            return
        self.writes += 1
        self._transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)


def _pieces(batch: list[Event]) -> Sequence[list[Event]]:
    """`batch` in pieces of at most `PIECE_EVENTS` events (none when it is empty)."""
    if len(batch) <= PIECE_EVENTS:
        return (batch,) if batch else ()
    return [batch[i : i + PIECE_EVENTS] for i in range(0, len(batch), PIECE_EVENTS)]


def _with_retry(frames: bytes) -> bytes:
    """`frames` with `retry:` as the last field of the first one."""
    end = frames.index(b"\n\n") + 1
    return frames[:end] + RETRY + frames[end:]


def _metrics(svc: Orchestrator, rec: TaskRecord) -> bytes:
    """An `event: metrics` frame: how the task is doing now."""
    now = svc.now_ms()
    waited = decoding = rate = None
    if rec.started_at is not None:
        waited = round(rec.started_at - rec.admitted_at)
    if rec.first_token_at is not None:
        elapsed = (rec.ended_at or now) - rec.first_token_at
        decoding = round(elapsed)
        rate = round(rec.tokens_out * 1000.0 / elapsed, 1) if elapsed > 0 else None
    event = MetricsEvent(
        tokens_out=rec.tokens_out, queue_wait_ms=waited, decode_ms_so_far=decoding,
        tokens_per_s=rate, replica_id=rec.replica_id, queue_position=svc.queue_position(rec),
    )  # fmt: skip
    return b"event: metrics\ndata: %s\n\n" % event.model_dump_json(exclude_none=True).encode()


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
    metrics_ms: int | None = None,
) -> web.StreamResponse:
    """Write `rec`'s events after `after` as SSE until its end (StreamGap, raised before
    any byte, when they are no longer retained); with `metrics_ms`, an `event: metrics`
    at most that often (after a write, so an idle task sends one per heartbeat)."""
    rec.stream.check_resume(after)
    response = _SseResponse(headers={**SSE_HEADERS, CORRELATION: request[CID], **(headers or {})})
    writes = 0
    follower: _Follower | None = None
    metrics_due = 0.0

    async def write(data: bytes, *, last: bool = False) -> None:
        """Write `data` (`last`: and the body's end, in the same send)."""
        nonlocal writes, metrics_due
        if follower is not None and (held := follower.take()):
            data = held + data
        writes += 1
        await (response.write_eof(data) if last else response.write(data))
        if not last and metrics_ms is not None and svc.now_ms() >= metrics_due:
            metrics_due = svc.now_ms() + metrics_ms
            await response.write(_metrics(svc, rec))

    with svc.reading(rec):
        await response.prepare(request)
        if request.transport is None:  # gone already
            return response
        if metrics_ms is None:  # (metrics go out after a write: the reader's task writes all)
            chunked = response.headers.get("Transfer-Encoding") == "chunked"
            follower = _Follower(request.transport, chunked, render, rec.stream)
        # tokens go out once a restart would know a client saw them (the gate); what arrived
        # while the journal wrote goes with them
        events = rec.stream.read(
            after, idle_s=svc.config.server.stream_heartbeat_s,
            gate=partial(svc.book.delivering, rec), push=follower,
        )  # fmt: skip
        span = tracing.reader(rec.spans, type(render).__name__)
        try:
            if svc.queue_position(rec) is not None:
                await write(_pause(svc, rec))
            elif rec.stream.next_id <= (0 if after is None else after + 1):
                await write(b"")  # nothing to send yet (a resume caught up): the headers
            first, ended = True, False
            async for batch in events:
                if not batch:
                    await write(_pause(svc, rec))
                for piece in _pieces(batch):
                    frames = render(piece)
                    if first and frames:  # (a batch may render to nothing: OpenAI's start)
                        frames, first = _with_retry(frames), False
                    ended = piece[-1][0] in _ENDINGS  # then the body's end goes with them
                    if frames or ended:
                        await write(frames, last=ended)
                    elif not writes:  # (a text completion's start): the headers
                        await write(b"")
                    if follower is not None:
                        follower.ready = not first
            if not ended:
                await write(b"", last=True)
        except StreamGap as gap:  # this reader fell behind the retained events
            envelope = stream_gap(gap.first_retained, f"this reader fell behind: {gap}")
            await write(render.error(envelope))
            await response.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            protocol = request.protocol
            if isinstance(protocol, GuardedHandler) and protocol.write_stalled:
                # the client stopped reading: its connection let go of it, and so of the task
                log.info(
                    "slow reader disconnected", task_id=rec.task.id, **tracing.log_ids(rec.spans)
                )
            # else the client went away (`reading` decides about the task)
        finally:
            if follower is not None:
                follower.take()  # a reader that ends early writes nothing after its end
            if span is not None:
                span.set_attribute("writes", writes + (follower.writes if follower else 0))
                span.end()
    return response
