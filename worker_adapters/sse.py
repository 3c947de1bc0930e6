"""Incremental SSE decoding of an engine's response body.

Engines frame streams differently — llama.cpp sends `data: {json}` with no terminator,
OpenAI-compatible servers end with `data: [DONE]`, TGI may omit the space after `data:` —
and later llama.cpp builds send `:` comment pings. `SseDecoder.feed` returns each event's
data as soon as its blank line arrives.

Memory is bounded by `max_event_bytes` whatever the stream's length: TGI, for one, repeats
the whole generated text in its final event, so an event larger than the bound is not
kept; it comes out as `Oversized`, holding only its first `head_bytes` and its last
`tail_bytes` (TGI's final token comes first in the event, its `details` last).

Written here rather than taken from an SSE client library because it runs once per token
on the hot path and must bound memory per event, which the libraries do not. It is a plain
object fed by the HTTP client's read loop, not an async generator: a generator layer per
token was a measurable share of the relay's CPU.
"""

from __future__ import annotations


class Oversized(str):
    """An event too large to keep whole: the str is its tail; `head` its beginning.
    (Events of normal size come as bytes, ready for a JSON parser.)"""

    head: str = ""

    @classmethod
    def of(cls, head: bytes, tail: bytes) -> Oversized:
        event = cls(tail.decode(errors="replace"))
        event.head = head.decode(errors="replace")
        return event


def _field(line: bytes) -> bytes | None:
    """The value of a `data:` line (one optional space stripped), else None."""
    if not line.startswith(b"data:"):
        return None  # comments (`:`), `event:`, `id:`, `retry:` carry nothing we use
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


class SseDecoder:
    """Feed it body bytes as they arrive; it returns the `data` of each completed event
    (multi-line data joined with newlines)."""

    def __init__(
        self,
        *,
        max_event_bytes: int = 256 * 1024,
        head_bytes: int = 128 * 1024,
        tail_bytes: int = 8192,
    ) -> None:
        self._max = max_event_bytes
        self._head_bytes = head_bytes
        self._tail_bytes = tail_bytes
        self._buffer = b""
        self._data: list[bytes] = []
        self._size = 0
        self._head: bytes | None = None  # set once the current event overflowed

    def _overflow(self, pending: bytes) -> None:
        joined = b"\n".join(self._data) + pending
        if self._head is None:
            self._head = joined[: self._head_bytes]
        self._data = [joined[-self._tail_bytes :]]

    def _event(self) -> bytes | Oversized:
        data = self._data
        joined = data[0] if len(data) == 1 else b"\n".join(data)
        return joined if self._head is None else Oversized.of(self._head, joined)

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        """The events `chunk` completes (usually none or one)."""
        if self._buffer or self._data or self._head is not None or b"\r" in chunk:
            return self._scan(chunk)
        # the usual reads: whole events of one `data: ` line each, split without a line scan
        parts = chunk.split(b"\n\n")
        whole = len(parts) - 1
        if (  # all of it such events (newlines only in their separators): no step per event
            not parts[-1] and chunk.startswith(b"data: ") and len(chunk) <= self._max
            and chunk.count(b"\n") == 2 * whole and chunk.count(b"\n\ndata: ") == whole - 1
        ):  # fmt: skip
            return [part[6:] for part in parts[:-1]]
        events: list[bytes | Oversized] = []
        for i, part in enumerate(parts[:-1]):
            if not part.startswith(b"data: ") or b"\n" in part or len(part) > self._max:
                return events + self._scan(b"\n\n".join(parts[i:]))
            events.append(part[6:])
        return events + self._scan(parts[-1]) if parts[-1] else events

    def _scan(self, chunk: bytes) -> list[bytes | Oversized]:
        """`feed`, line by line: any framing, any state."""
        events: list[bytes | Oversized] = []
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        while True:
            cut = buffer.find(b"\n", start)
            if cut < 0:
                break
            line = buffer[start:cut]
            start = cut + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data or self._head is not None:
                    events.append(self._event())
                self._data, self._size, self._head = [], 0, None
                continue
            value = _field(line) if self._head is None else line
            if value is None:
                continue
            self._size += len(value)
            if self._head is not None or self._size > self._max:
                self._overflow(value)
            else:
                self._data.append(value)
        rest = buffer[start:]
        if len(rest) > self._max:  # a huge line: keep its head and tail
            value = _field(rest) if self._head is None else rest
            self._overflow(value or b"")
            rest = b""
        self._buffer = rest
        return events

    def end(self) -> list[bytes | Oversized]:
        """What a body ending here still holds: a stream cut right after its last data
        line yields that event."""
        value = _field(self._buffer.rstrip(b"\r")) if self._buffer else None
        self._buffer = b""
        if value is not None:
            self._data.append(value)
        return [self._event()] if self._data else []
