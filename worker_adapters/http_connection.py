"""One engine connection and the response read on it: an asyncio protocol whose bytes
llhttp (via `httptools`, the parser uvicorn uses) parses, the body handed over as it
arrives, a socket read at a time (`HttpClient` in `http_client` pools these).

- A body is read either by pull (`chunk`: buffered up to `HIGH_WATER` bytes; past that the
  socket stops being read until the consumer catches up, so a slow reader holds bounded
  memory whatever the engine sends) or by push (`deliver`: each read handed to a callback
  from the connection's own `data_received` — no task step per read, which is what a
  token costs the relay most — and all the body chunks of one read in one call).
- A response the consumer leaves before its end closes the connection: that is how an
  engine learns the request was cancelled and frees its slot.

Failures are `EngineConnectionError`s whose `what` says, without addresses, what happened.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

import httptools

#: A pooled connection unused this long is closed rather than reused.
IDLE_S = 4.0
#: Body bytes buffered before the connection stops reading.
HIGH_WATER = 256 * 1024
#: The most a whole-body `read` keeps (probes, error answers, metrics).
MAX_READ = 16 * 1024 * 1024


class EngineConnectionError(ConnectionError):
    """The engine (or the way to it) failed; `what` is the client-facing account."""

    what = "connection lost"


class CouldNotConnect(EngineConnectionError):
    what = "could not connect to the engine"


class EngineClosed(EngineConnectionError):
    what = "the engine closed the connection"


class ResponseCutOff(EngineConnectionError):
    what = "the engine's response was cut off"


class MalformedResponse(EngineConnectionError):
    what = "the engine sent a malformed response"


class ClientClosed(EngineConnectionError):
    what = "the replica was stopped"


class NoAnswerInTime(EngineConnectionError):
    what = "the engine did not answer in time"


class Response(asyncio.Protocol):
    """One connection, and the response being read on it (httptools calls the `on_*`)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._begin()

    def _begin(self) -> None:
        """Ready the connection for its next response."""
        self.status = 0
        self.keep_alive = False
        self.received = False  # any byte of this response
        self._framed = False  # a length or chunked body: its end is not the socket's
        self._complete = False
        self._headers: asyncio.Future[None] = self._loop.create_future()
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: EngineConnectionError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._then: Callable[[], None] | None = None  # once complete (see `finish`)
        self._consumer: Callable[[bytes], bool] | None = None  # see `deliver`
        self._delivered: asyncio.Future[bool] | None = None
        self._read: list[bytes] = []  # the consumer's body chunks of the read being parsed

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._hand_over()
            self._fail(MalformedResponse(repr(e)))
            self._close()
            return
        self._hand_over()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._complete:
            return
        if not self._headers.done():
            self._fail(EngineClosed(repr(exc) if exc else "before the response"))
        elif self._framed:
            self._fail(ResponseCutOff(repr(exc) if exc else "before the body's end"))
        else:  # a body without a length ends with the connection
            self._complete = True
            self._wake()

    # -- httptools callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._headers.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._then is not None:
            return  # the consumer has what it wanted: the rest is only read to its end
        if self._consumer is not None:  # handed over once the read is parsed
            self._read.append(body)
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self._hand_over()
        self._complete = True
        self._wake()
        if self._then is not None:
            then, self._then = self._then, None
            then()

    # -- the consumer's side -----------------------------------------------------------

    def _hand_over(self) -> None:
        """The body chunks of the read just parsed, to the consumer in one call: an engine
        read often holds several chunks (a token each), and the consumer's work per call
        is the relay's per-token cost."""
        read = self._read
        if not read:
            return
        data = read[0] if len(read) == 1 else b"".join(read)
        read.clear()
        consumer = self._consumer
        if consumer is None:  # (it had all it wanted, or the connection was closed)
            return
        try:
            had_all = consumer(data)
        except Exception as e:  # raised to `deliver`'s caller, not into the loop
            self._delivered_with(error=e)
            return
        if had_all:
            self._delivered_with(True)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._consumer is not None and (self._complete or self._error is not None):
            self._delivered_with(False, self._error)

    def _delivered_with(self, had_all: bool = False, error: Exception | None = None) -> None:
        """End a `deliver`: the consumer had all it wanted, or the body ended, or failed."""
        self._consumer = None
        delivered = self._delivered
        if delivered is not None and not delivered.done():
            if error is None:
                delivered.set_result(had_all)
            else:
                delivered.set_exception(error)

    def _fail(self, error: EngineConnectionError) -> None:
        if self._error is None:
            self._error = error
        if not self._headers.done():
            self._headers.set_exception(error)
            self._headers.exception()  # retrieved: a caller that left will not see it
        self._wake()

    def _close(self) -> None:
        self.closed = True
        self._consumer = None  # whatever still arrives is nobody's
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return self._complete and self.keep_alive and not self.closed and self._error is None

    def finish(self, then: Callable[[], None]) -> None:
        """Read what is left of the body (discarding it), then call `then`; close the
        connection if the body has not ended within `IDLE_S`."""
        timer = self._loop.call_later(IDLE_S, self._close)

        def done() -> None:
            timer.cancel()
            then()

        self._then = done
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:  # the rest must be read to be skipped
            self._paused = False
            self.transport.resume_reading()

    async def _send(self, request: bytes) -> None:
        """Write a request and wait for its response's status line and headers."""
        assert self.transport is not None
        self.transport.write(request)
        await self._headers

    async def chunk(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); b"" once
        the body has ended. Raises EngineConnectionError after what did arrive."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._waiter = self._loop.create_future()
            await self._waiter
        data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def deliver(self, consumer: Callable[[bytes], bool]) -> bool:
        """Hand the body to `consumer` as it arrives — from the connection's callback, so
        it must not block — until it returns True (it has all it wants) or the body ends.
        Returns which of the two happened. Raises EngineConnectionError after what did
        arrive, and what `consumer` raised. Left early (cancelled), nothing more is handed
        over."""
        if self._body:  # what came with the headers, or before this call
            data = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            self._buffered = 0
            if consumer(data):
                return True
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self._error is not None:
            raise self._error
        if self._complete:
            return False
        self._consumer = consumer
        self._delivered = self._loop.create_future()
        try:
            return await self._delivered
        finally:
            self._consumer = self._delivered = None

    async def read(self) -> bytes:
        """The whole body (at most `MAX_READ` bytes)."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.chunk():
            size += len(chunk)
            if size > MAX_READ:
                raise MalformedResponse(f"a body over {MAX_READ} bytes")
            parts.append(chunk)
        return b"".join(parts)
