"""Connection hygiene at the socket: how many connections the daemon holds, how long an idle
or half-sent one may stay, how large a request head may be, and what aiohttp's own refusals
(malformed HTTP, oversized heads) look like — our JSON envelope, one log line, never a
traceback.

aiohttp's `RequestHandler` is the per-connection protocol; `GuardedHandler` extends it at
its documented seams (`connection_made`, `data_received`, `connection_lost`,
`handle_error`, and the transport's flow control, `pause_writing`/`resume_writing`). Four
timers: aiohttp's idle timer (`keepalive_timeout` = `idle_timeout_s`)
closes a connection with no request in progress, from when it opens and after each
response; ours (`header_timeout_s`) starts at the first byte of a request and closes the
connection unless the whole head has arrived by then (a slow-loris head cannot keep it by
trickling bytes); and, for a body that did not come with its head, `body_timeout_s` from
the head, extended by a second for each `BODY_MIN_RATE` bytes received (Apache's
`mod_reqtimeout`): a slow upload that keeps coming is served, a stalled one — or one short
of its Content-Length, a careless client's — is answered 408 and closed; and, for any
answer, `write_timeout_s` while the transport's buffer is past its high-water mark (writing
paused), again each time the client has taken some of it (nginx's `send_timeout`): a client
that takes none of it for that long stopped reading, and its connection is aborted, the
bytes it did not take dropped — a stream's or a 16 MiB status alike, so no answer holds
memory, a handler and a connection for a client that is not there, while a slow one that
keeps reading is served. The middleware says when a head is complete (`request_started`).

Past `max_connections`, a connection is still served for the operator's paths (health,
readiness, metrics), and answered 503 `OVERLOADED` for anything else; past twice the limit
it gets that 503 at once, before reading anything, and is closed.
"""

from __future__ import annotations

import asyncio
import resource
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from orchestrator_core.errors import ErrorCode
from orchestratord.api.errors import STATUS, code_for_http, error_response
from orchestratord.api.http import Handler
from orchestratord.api_models import ErrorEnvelope
from orchestratord.server_config import ServerConfig

log = structlog.get_logger("orchestratord.http")

#: Reachable however many connections are open: an operator must see an overloaded daemon.
OPERATOR_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

#: File descriptors kept beyond the connection limit (engines, the store, logs).
_FD_RESERVE = 256
#: Bytes a second a request body must average, past `body_timeout_s`.
BODY_MIN_RATE = 1024
#: Why the daemon closed a connection on its client (`connections_dropped_total{reason}`):
#: a head or a body too slow, an answer not taken, or opened past twice the limit.
DROP_REASONS = ("head_timeout", "body_timeout", "write_timeout", "over_limit")


def _answer_bytes(status: int, reason: str, envelope: ErrorEnvelope, extra: str = "") -> bytes:
    """A whole error answer, written to a connection the daemon then closes."""
    body = envelope.model_dump_json(exclude_none=True).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


#: The answer to a connection refused before it is read.
_REFUSED = _answer_bytes(
    503, "Service Unavailable",
    ErrorEnvelope.of(ErrorCode.OVERLOADED, "too many connections; retry shortly"),
    "Retry-After: 1\r\n",
)  # fmt: skip


class ConnectionGuard:
    """The protocol factory the listening socket uses: one `GuardedHandler` per connection,
    counted against `max_connections`."""

    def __init__(self, server: web.Server, config: ServerConfig, max_connections: int) -> None:
        self._server = server
        self.max_connections = max_connections
        self.open = 0
        #: Connections closed on their clients, by reason (`DROP_REASONS`).
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.header_timeout_s = config.header_timeout_s
        self.body_timeout_s = config.body_timeout_s
        self.write_timeout_s = config.write_timeout_s
        envelope = ErrorEnvelope.of(
            ErrorCode.INVALID_PARAMS,
            f"request body too slow: it must arrive within {config.body_timeout_s:g} s of "
            f"its head, and a second more for each {BODY_MIN_RATE} bytes sent",
        )
        self.body_late = _answer_bytes(408, "Request Timeout", envelope)
        self.max_head_bytes = config.max_head_bytes
        envelope = ErrorEnvelope.of(
            ErrorCode.INVALID_PARAMS,
            f"request head too large (at most {config.max_head_bytes} bytes in all)",
        )
        self.head_too_large = _answer_bytes(431, "Request Header Fields Too Large", envelope)
        self._kwargs: dict[str, Any] = {
            "keepalive_timeout": config.idle_timeout_s,
            "max_line_size": config.max_header_bytes,
            "max_field_size": config.max_header_bytes,
            "max_headers": 100,
            "access_log": None,
        }

    def serve(self, server: web.Server) -> None:
        """Hand new connections to `server` from now on (a daemon that gained or lost its
        leadership); those already open stay with the application they came to."""
        self._server = server

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self._server, self, loop=asyncio.get_running_loop(), **self._kwargs)


class GuardedHandler(web.RequestHandler):
    __slots__ = (
        "_body_from", "_body_timer", "_guard", "_head_bytes", "_head_done", "_head_tail",
        "_head_timer", "_in_request", "_path", "_unsent", "_uploading", "_write_timer",
        "over_limit", "write_stalled",
    )  # fmt: skip

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        #: Opened past the limit: only the operator's paths are served.
        self.over_limit = False
        self._head_timer: asyncio.TimerHandle | None = None
        #: What has arrived of the request head so far, its last bytes (an end of head may
        #: be split between reads), and whether it is whole (what follows is not counted
        #: until its handler is done and its body all here: the next request's head).
        self._head_bytes = 0
        self._head_tail = b""
        self._head_done = False
        self._in_request = False
        #: The request whose body is still arriving, since when, and the timer that checks.
        self._uploading: web.BaseRequest | None = None
        self._body_from = 0.0
        self._body_timer: asyncio.TimerHandle | None = None
        #: The latest request's path (for the log, should its client stop reading).
        self._path = ""
        self._write_timer: asyncio.TimerHandle | None = None
        #: Bytes of the answer its client had not taken at the write timer's last look.
        self._unsent = 0
        #: Aborted because its client took none of the answer for `write_timeout_s`.
        self.write_stalled = False

    def data_received(self, data: bytes) -> None:
        if not self._in_request:
            if self._head_timer is None:  # a new request begins
                # (aiohttp's own loop: Python 3.11's get_running_loop() is a getpid() call)
                self._head_timer = self._loop.call_later(
                    self._guard.header_timeout_s, self._head_late
                )
            if not self._head_done and not self._head_fits(data):
                return
        super().data_received(data)

    def _head_fits(self, data: bytes) -> bool:
        """Count `data` into the request head until the head's end (a blank line); past
        `max_head_bytes` the connection is answered 431 and closed, the rest unread.
        (aiohttp bounds each line and the number of headers, not their sum: 99 headers
        of 8 KB made an 800 KB head that a connection held, 4,096 connections 3 GB.)"""
        tail = self._head_tail  # (a blank line may be split between this read and the last)
        split = (tail + data[:3]).find(b"\r\n\r\n") if tail else -1
        if split >= 0:
            taken = split + 4 - len(tail)  # the bytes of `data` that end the head
        else:
            end = data.find(b"\r\n\r\n")
            taken = end + 4 if end >= 0 else -1
        if taken < 0:
            self._head_bytes += len(data)
            self._head_tail = data[-3:] if len(data) >= 3 else (tail + data)[-3:]
        else:
            self._head_bytes += taken
            self._head_done = True
        if self._head_bytes <= self._guard.max_head_bytes:
            return True
        log.info("request head too large", max_head_bytes=self._guard.max_head_bytes)
        assert self.transport is not None  # (it is delivering this data)
        self.transport.write(self._guard.head_too_large)
        self.transport.close()
        return False

    def request_started(self, request: web.BaseRequest) -> None:
        """Its head is complete (a handler runs): the head timer is done, and the body's
        starts unless the body came with the head (as small ones do)."""
        self._in_request = True
        self._path = request.path
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if not request.content.is_eof():
            self._uploading, self._body_from = request, self._loop.time()
            self._body_timer = self._loop.call_at(
                self._body_from + self._guard.body_timeout_s, self._body_check
            )

    def request_done(self) -> None:
        self._in_request = False
        uploading = self._uploading
        if uploading is None or uploading.content.is_eof():  # else the rest is its body
            self._head_bytes, self._head_tail, self._head_done = 0, b"", False
        self._uploading = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        request = self._uploading
        if request is None or self.transport is None:
            return
        body = request.content
        if body.is_eof() or request.writer.output_size:  # all here, or answered without it
            return
        due = self._body_from + self._guard.body_timeout_s + body.total_bytes / BODY_MIN_RATE
        if self._loop.time() < due:  # it is still coming fast enough
            self._body_timer = self._loop.call_at(due, self._body_check)
            return
        log.info(
            "request body too slow; answering 408 and closing",
            body_timeout_s=self._guard.body_timeout_s, received_bytes=body.total_bytes,
        )  # fmt: skip
        self._guard.dropped["body_timeout"] += 1
        self.transport.write(self._guard.body_late)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._await_progress()

    def _await_progress(self) -> None:
        assert self.transport is not None  # (flow control pauses only a connected one)
        self._unsent = self.transport.get_write_buffer_size()
        self._write_timer = self._loop.call_later(self._guard.write_timeout_s, self._write_check)

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()

    def _write_check(self) -> None:
        """`write_timeout_s` after writing paused, or after the client last took bytes. A
        smaller buffer than at the last look means it is reading. (A writer adds at most
        aiohttp's drain limit, 64 KiB, before it waits for the drain: a stream's client
        must take more than that in the time to count as reading; an answer written at once
        adds nothing.)"""
        self._write_timer = None
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size() < self._unsent:
            self._await_progress()
            return
        self.write_stalled = True
        self._guard.dropped["write_timeout"] += 1
        log.info(
            "slow client disconnected", path=self._path,
            write_timeout_s=self._guard.write_timeout_s,
        )  # fmt: skip
        self.transport.abort()  # what it did not take is dropped, not flushed

    def _head_late(self) -> None:
        self._head_timer = None
        if not self._in_request and self.transport is not None:
            log.info(
                "request head too slow; closing", header_timeout_s=self._guard.header_timeout_s
            )
            self._guard.dropped["head_timeout"] += 1
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        guard = self._guard
        guard.open += 1
        self.over_limit = guard.open > guard.max_connections
        if guard.open > 2 * guard.max_connections:
            guard.dropped["over_limit"] += 1
            transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
            transport.write(_REFUSED)
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.open -= 1
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._write_timer = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own refusals (a request it could not parse) as the JSON envelope."""
        if request.writer.output_size > 0:  # mid-response: all that is left is to close
            raise ConnectionError("cannot answer an error after the response started")
        if isinstance(exc, LineTooLong):
            status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
            reason = f"request head too large (at most {self.max_field_size} bytes a line)"
        elif status < 500:  # the parser's words, on one line, cut short
            reason = "malformed HTTP request: " + " ".join((message or "").split())[:160]
        else:
            reason = HTTPStatus(status).phrase
        if status >= 500:
            log.error("http error", status=status, error=repr(exc))
        else:  # a client's mistake: one line, no traceback
            log.info("bad request", status=status, error=reason)
        envelope = ErrorEnvelope.of(code_for_http(status), reason)
        response = error_response(envelope, status)
        response.force_close()
        return response


@web.middleware
async def connection_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The first middleware: tells the connection its request head is complete, and answers
    503 on a connection opened past the limit (the operator's paths aside)."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):  # (a test client's own server)
        return await handler(request)
    protocol.request_started(request)
    try:
        if protocol.over_limit and request.path not in OPERATOR_PATHS:
            envelope = ErrorEnvelope.of(ErrorCode.OVERLOADED, "too many connections; retry shortly")
            response = error_response(envelope, STATUS[ErrorCode.OVERLOADED])
            response.force_close()
            return response
        return await handler(request)
    finally:
        protocol.request_done()


def raise_fd_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to hold `max_connections` (up to the hard
    limit); the connection limit that fits what it got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections * 2 + _FD_RESERVE  # refused connections hold an fd briefly
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    fits = max(1, (soft - _FD_RESERVE) // 2)
    if fits < max_connections:
        log.warning(
            "open-file limit too low for server.max_connections; lowering it",
            max_connections=max_connections, lowered_to=fits, nofile=soft,
        )  # fmt: skip
    return min(max_connections, fits)
