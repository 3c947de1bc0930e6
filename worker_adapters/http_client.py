"""A lean HTTP/1.1 client for engines: requests to one base URL over pooled connections,
each an asyncio protocol of its own (`http_connection.Response`).

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
  although it advertises keep-alive), and keeps one connection opened ahead: each request
  takes the spare and starts opening the next, so a stream's request goes out at once
  instead of after a connect, which on a loaded loop waits behind whatever else is ready
  (on llama.cpp it leaves about 0.5 ms sooner, docs/BENCHMARKS.md). A spare the
  engine closed while it waited is a pooled connection found stale: the request is sent
  again on a fresh one. One spare at most, dropped after `IDLE_S` (llama-server keeps an
  idle connection 5 s, on one of the `n_parallel + 2` threads it serves connections with).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

from worker_adapters.http_connection import (
    IDLE_S,
    ClientClosed,
    CouldNotConnect,
    EngineClosed,
    Response,
)

#: Seconds allowed to open a connection.
CONNECT_TIMEOUT_S = 5.0


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
        #: the spare being opened (`keep_alive=False` only)
        self._opening: asyncio.Task[None] | None = None
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        if self._opening is not None:
            self._opening.cancel()
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

    async def _open_spare(self) -> None:
        try:
            conn = await self._connect()
        except CouldNotConnect:
            return  # the next request connects itself, and reports what it finds
        finally:
            self._opening = None
        if self.closed:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

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
            if not self._keep_alive and self._opening is None:
                # scheduled now, it runs once this request is written
                self._opening = asyncio.get_running_loop().create_task(self._open_spare())
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
