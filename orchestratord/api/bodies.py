"""Request bodies in memory, bounded in bytes across every connection at once.

A JSON body is read whole before it is validated. `server.max_body_bytes` bounds one body,
but `max_connections` of them arriving at once would be gigabytes. `BodyBudget` bounds what
bodies still arriving may hold together at `server.body_buffer_bytes`. A body is reserved
twice its declared length (its pieces as they arrive, then their join into `bytes`), or twice
`max_body_bytes` when it is chunked. One that would pass the budget is refused unread with
503 `OVERLOADED` and `Retry-After`: the client retries once the others have arrived.

A body that came whole with its head (the common, small case) is already held. It is read
and validated without yielding to the loop, so no other request can interleave, and it
takes no reservation: it costs one check.

Once read, the body is nobody's but its handler's: aiohttp's own `request.read()` would
keep a copy on the request, which aiohttp holds until the connection's next request.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord.service import Refusal

#: How long a client refused for the budget should wait: bodies ahead of it arrive or time
#: out (`body_timeout_s`) in about that.
RETRY_AFTER_MS = 1000


class BodyBudget:
    """Bytes reserved for request bodies being received; at most `limit`."""

    __slots__ = ("held", "limit", "max_body")

    def __init__(self, limit: int, max_body: int) -> None:
        self.limit = limit
        self.max_body = max_body
        #: Bytes reserved now (the `request_body_bytes` gauge).
        self.held = 0

    async def read(self, request: web.Request) -> bytes:
        """The request's whole body; 413 before reading one that declares more than
        `max_body`, and a 503 Refusal when its reservation would pass the budget."""
        if request.content.is_eof():  # all here already: read without a wait
            return await self._whole(request)
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=declared)
        size = 2 * (self.max_body if declared is None else declared)
        if self.held + size > self.limit:
            raise Refusal(
                ErrorCode.OVERLOADED,
                "request bodies being received fill server.body_buffer_bytes; retry shortly",
                retry_after_ms=RETRY_AFTER_MS,
            )
        self.held += size
        try:
            return await self._whole(request)
        finally:
            self.held -= size

    async def _whole(self, request: web.Request) -> bytes:
        """The body's bytes, kept by nobody else. (aiohttp's `request.read()` keeps them
        on the request, which aiohttp keeps while the connection waits for its next
        request: an idle keep-alive connection held its last body, up to `max_body`.)"""
        chunks, size = [], 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > self.max_body:  # (a chunked body declares no length)
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=size)
            chunks.append(chunk)
        return b"".join(chunks)


#: The application's budget, used by `http.parse`.
BODIES: web.AppKey[BodyBudget] = web.AppKey("bodies", BodyBudget)
