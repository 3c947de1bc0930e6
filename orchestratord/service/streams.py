"""One task's event stream: SSE frames built once, fanned out to any number of readers.

Memory is bounded per task whatever the output length: the last `max_events` frames are
kept for `Last-Event-ID` resume; a reader that falls further behind than that is told so
with an `error` event instead of silently losing tokens.

Hot path: a token costs one small bytes format and a deque append; readers are woken through
one shared future (no task switch per token per reader) and write everything that arrived
since they last ran in one write — bursts are batched for free.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator


class StreamGap(Exception):
    """The reader asked for events that are no longer retained."""

    def __init__(self, first_retained: int) -> None:
        super().__init__(f"events before id {first_retained} are no longer retained")
        self.first_retained = first_retained


def frame(event: str, event_id: int, data: str) -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {data}\n\n".encode()


class TaskStream:
    __slots__ = ("_closed", "_first", "_frames", "_next", "_waiter")

    def __init__(self, max_events: int) -> None:
        self._frames: deque[bytes] = deque(maxlen=max_events)
        self._first = 0  # id of _frames[0]
        self._next = 0  # id the next event gets
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def next_id(self) -> int:
        return self._next

    def emit(self, event: str, data: str) -> None:
        """Append an event whose `data` is already JSON text."""
        self._append(frame(event, self._next, data))

    def emit_token(self, index: int, text: str, ids: tuple[int, ...] = ()) -> None:
        data = b'{"i":%d,"t":%s' % (index, json.dumps(text, ensure_ascii=False).encode())
        if ids:  # the engine's token ids, where it gives them (determinism proofs use them)
            data += b',"ids":[%s]' % ",".join(map(str, ids)).encode()
        self._append(b"event: token\nid: %d\ndata: %s}\n\n" % (self._next, data))

    def _append(self, payload: bytes) -> None:
        if self._closed:
            raise RuntimeError("stream is closed")
        frames = self._frames
        if len(frames) == frames.maxlen:
            self._first += 1
        frames.append(payload)
        self._next += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """No more events (after the terminal `end` or `error`)."""
        self._closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _chunk_from(self, cursor: int) -> bytes:
        if cursor < self._first:
            raise StreamGap(self._first)
        start = cursor - self._first
        frames = self._frames
        if start == len(frames) - 1:
            return frames[start]
        return b"".join(frames[i] for i in range(start, len(frames)))

    async def read(self, after: int | None = None) -> AsyncIterator[bytes]:
        """Yield frames with id > `after` (all when None) as they arrive, joined into one
        chunk per wake-up, until the stream closes. Raises StreamGap when the requested
        events were dropped from the buffer."""
        cursor = 0 if after is None else after + 1
        while True:
            if cursor < self._next:
                chunk = self._chunk_from(cursor)
                cursor = self._next
                yield chunk
                continue
            if self._closed:
                return
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
