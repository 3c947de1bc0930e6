"""Incremental SSE decoding of an engine's response body.

Engines frame streams differently — llama.cpp sends `data: {json}` with no terminator,
OpenAI-compatible servers end with `data: [DONE]`, TGI may omit the space after `data:` —
and later llama.cpp builds send `:` comment pings. This yields each event's data as soon
as its blank line arrives.

Memory is bounded by `max_event_bytes` whatever the stream's length: TGI, for one, repeats
the whole generated text in its final event, so an event larger than the bound is not
kept; it is yielded as `Oversized`, holding only its first `head_bytes` and its last
`tail_bytes` (TGI's final token comes first in the event, its `details` last).

Written here rather than taken from an SSE client library because it runs once per token
on the hot path and must bound memory per event, which the libraries do not.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


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


async def sse_data(
    chunks: AsyncIterable[bytes],
    *,
    max_event_bytes: int = 256 * 1024,
    head_bytes: int = 128 * 1024,
    tail_bytes: int = 8192,
) -> AsyncIterator[bytes | Oversized]:
    """Yield the `data` of each event (multi-line data joined with newlines)."""
    buffer = b""
    data: list[bytes] = []
    size = 0
    head: bytes | None = None  # set once the current event overflowed

    def overflow(pending: bytes) -> None:
        nonlocal head, data
        if head is None:
            head = (b"\n".join(data) + pending)[:head_bytes]
        data = [(b"\n".join(data) + pending)[-tail_bytes:]]

    async for chunk in chunks:
        buffer += chunk
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                if len(buffer) > max_event_bytes:  # a huge line: keep its head and tail
                    value = _field(buffer) if head is None else buffer
                    overflow(value or b"")
                    buffer = b""
                break
            line, buffer = buffer[:cut].rstrip(b"\r"), buffer[cut + 1 :]
            if not line:
                if data or head is not None:
                    joined = data[0] if len(data) == 1 else b"\n".join(data)
                    yield joined if head is None else Oversized.of(head, joined)
                data, size, head = [], 0, None
                continue
            value = _field(line) if head is None else line
            if value is None:
                continue
            size += len(value)
            if head is not None or size > max_event_bytes:
                overflow(value)
            else:
                data.append(value)
    value = _field(buffer.rstrip(b"\r")) if buffer else None
    if value is not None:
        data.append(value)
    if data:  # a stream cut right after its last data line
        joined = b"\n".join(data)
        yield joined if head is None else Oversized.of(head, joined)
