"""A lean HTTP/1.1 client for engines: one asyncio protocol per connection, llhttp (via
`httptools`, the parser uvicorn uses) to read responses, bodies handed over as they arrive,
a socket read at a time.

Why not aiohttp's client, which the adapters used before: per streamed request the relay
pays for one engine exchange, and aiohttp's request/response objects, header maps, URL
objects, timers and stream reader were the largest single share of the daemon's CPU
(docs/BENCHMARKS.md). Engines need little of HTTP: a POST with a JSON body, a streamed
(chunked or read-to-close) answer, a GET for probes. This does that and nothing else:

- Connections are pooled where the engine keeps them alive (`keep_alive=True`), LIFO, and
  dropped after `IDLE_S` unused (under uvicorn's 5 s idle close). A pooled connection the
  engine closed while idle, found out only after the request was written (no response
  byte arrived), is retried once on a fresh connection: the engine never answered it.
- `keep_alive=False` sends `Connection: close` (llama-server closes after every stream
  although it advertises keep-alive).
- A body is read either by pull (`chunk`: buffered up to `HIGH_WATER` bytes; past that the
  socket stops being read until the consumer catches up, so a slow reader holds bounded
  memory whatever the engine sends) or by push (`deliver`: each read handed to a callback
  from the connection's own `data_received` — no task step per read, which is what a
  token costs the relay most).
- A response the consumer leaves before its end closes the connection: that is how an
  engine learns the request was cancelled and frees its slot.

Failures are `EngineConnectionError`s whose `what` says, without addresses, what happened.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

#: Seconds allowed to open a connection.
CONNECT_TIMEOUT_S = 5.0
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


class HttpClient:
    """Requests to one engine's base URL (`http://` or `https://`)."""

    def __init__(
        self, base_url: str, *, headers: Mapping[str, str] | None = None, keep_alive: bool = True
    ) -> None:
        url = urlsplit(base_url)
        self._host = url.hostname or "127.0.0.1"
        https = url.scheme == "https"
        self._port = url.port or (443 if https else 80)
        self._ssl = ssl.create_default_context() if https else None
        self._prefix = url.path.rstrip("/")
        self._keep_alive = keep_alive
        fixed = {"Host": url.netloc, **(headers or {})}
        if not keep_alive:
            fixed["Connection"] = "close"
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: deque[Response] = deque()
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn._close()
        self._idle.clear()

    async def _connect(self) -> Response:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, conn = await loop.create_connection(
                    Response,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                )
        except (OSError, TimeoutError) as e:
            raise CouldNotConnect(f"{self._host}:{self._port}: {e!r}") from e
        return conn

    def _pooled(self) -> Response | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely stale
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn._close()
        return None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a request; return once its status and headers arrived. The caller reads
        the body from the response and then hands it to `release`."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        head = (
            f"{method} {self._prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        request = head.encode("latin-1") + body
        stale = False
        while True:
            if self.closed:  # the replica was stopped while this request waited
                raise ClientClosed("the client was closed")
            pooled = None if stale else self._pooled()
            conn = pooled or await self._connect()
            try:
                await conn._send(request)
                return conn
            except EngineClosed:
                conn._close()
                if pooled is None or conn.received:
                    raise
                # the engine had closed the idle connection and never saw this request:
                # once more, on a fresh one (whatever closed this may have closed the rest)
                stale = True
            except BaseException:
                conn._close()
                raise

    def release(self, conn: Response, *, read_to_end: bool = False) -> None:
        """Done with a response: its connection is pooled if the exchange ended cleanly
        and the engine keeps it, else closed (which cancels an unfinished request). With
        `read_to_end` (the consumer got all it needed, e.g. `[DONE]`, and the body's last
        bytes may still be on their way) an unfinished body is read to its end first, off
        the caller's path."""
        if conn.reusable:
            self._pool(conn)
        elif read_to_end and self._keep_alive and conn.keep_alive and not conn.closed:
            conn.finish(lambda: self._pool(conn))
        else:
            conn._close()

    def _pool(self, conn: Response) -> None:
        if not (self._keep_alive and conn.reusable and not self.closed):
            conn._close()
            return
        conn._begin()
        conn.idle_since = now = time.monotonic()
        self._idle.append(conn)
        # the oldest wait at the other end: once a burst is over, steady traffic reuses the
        # newest, so the burst's connections are closed here rather than kept until reused
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= IDLE_S):
            idle.popleft()._close()
