"""Incremental SSE decoding of an engine's response body, line by line.

Engines frame streams differently — llama.cpp sends `data: {json}` with no terminator,
OpenAI-compatible servers end with `data: [DONE]`, TGI may omit the space after `data:` —
and later llama.cpp builds send `:` comment pings. This yields each event's data payload
as soon as its blank line arrives; memory is one event, whatever the stream's length.

Written here rather than taken from an SSE client library because it runs once per token
on the hot path over aiohttp's own line reader, with no per-event objects beyond the str.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def sse_data(lines: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the `data` of each event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(b"data:"):
            value = line[5:]
            if value.startswith(b" "):
                value = value[1:]
            data.append(value.decode())
        # comments (`:`), `event:`, `id:` and `retry:` lines carry nothing an adapter uses
    if data:  # a stream cut right after its last data line
        yield "\n".join(data)
