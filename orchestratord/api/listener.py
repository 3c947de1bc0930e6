"""The daemon's listening sockets, accepted from in batches.

uvloop serves a listening socket through libuv, and libuv (since 1.45, libuv#3696) accepts
one connection each turn of the loop: most wake-ups find one. Under load a turn of the
daemon's loop takes milliseconds, and connections arrive in bursts — a thousand idle
clients closed by the head timeout come back at once — so a burst waited a turn per
connection ahead of it in the kernel's accept queue. In the soak, 80 to 350 connections
stood in that queue: a new connection waited 1.1 s for its answer (p50; up to 3.3 s) while
a request on an open one was answered in 11 ms, and a `/healthz` probe now and then timed
out after 5 s. asyncio's own loop accepts up to its backlog each wake-up; `Listener` does
that on uvloop: it owns the sockets, accepts everything pending (at most `ACCEPTS_PER_TURN`)
each time one is readable, and hands each connection to the loop's own transport
(`loop.connect_accepted_socket`).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import struct
import sys
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("orchestratord.http")

#: Connections accepted in one turn of the loop at most: a burst larger than this is taken
#: over a few turns, so other work is not held up behind it (each costs some tens of µs).
ACCEPTS_PER_TURN = 256
#: How long accepting pauses when the process is out of descriptors (asyncio's delay):
#: the kernel's queue holds what arrives meanwhile, and open connections close to free some.
OUT_OF_DESCRIPTORS_PAUSE_S = 1.0
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Linux's `struct tcp_info` of a listening socket carries its accept queue's length in
#: `tcpi_unacked` (and the backlog in `tcpi_sacked`): eight one-byte fields, four u32, then it.
_TCP_INFO_QUEUED = struct.Struct("24xI")


class Listener:
    """Listening sockets on `host`:`port` (every address the host resolves to, as
    `loop.create_server` binds), each connection served by a protocol from `factory`."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        sockets: list[socket.socket],
        tls: ssl.SSLContext | None,
        tls_handshake_timeout_s: float | None,
    ) -> None:
        self._factory = factory
        self.sockets = sockets
        #: uvloop's arguments for a TLS connection (none, without TLS).
        self._tls: dict[str, Any] = {}
        if tls is not None:
            self._tls = {"ssl": tls, "ssl_handshake_timeout": tls_handshake_timeout_s}
        self._loop = asyncio.get_running_loop()
        #: Connections being handed to their transport (the loop keeps tasks weakly).
        self._handing: set[asyncio.Task[Any]] = set()
        for sock in sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    @classmethod
    async def bind(
        cls,
        factory: Callable[[], asyncio.Protocol],
        host: str,
        port: int,
        *,
        backlog: int,
        tls: ssl.SSLContext | None = None,
        tls_handshake_timeout_s: float | None = None,
    ) -> Listener:
        """Bind and listen (with `tls`, a connection whose handshake is not done within
        `tls_handshake_timeout_s` is closed; None: uvloop's 60 s). Raises OSError naming the
        address that cannot be listened on (one in use, one this host does not have)."""
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sockets: list[socket.socket] = []
        try:
            for family, _, _, _, address in dict.fromkeys(infos):  # (duplicates, once)
                if sockets and port == 0:  # every address on the port the first was given
                    address = (address[0], sockets[0].getsockname()[1], *address[2:])
                sockets.append(_listening(family, address, backlog))
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        return cls(factory, sockets, tls, tls_handshake_timeout_s)

    @property
    def port(self) -> int:
        """The port bound (the one chosen, when asked for 0)."""
        return int(self.sockets[0].getsockname()[1])

    def waiting(self) -> int:
        """Connections the kernel has completed that are not accepted yet (the sockets'
        accept queues; 0 where the kernel does not say). Read at scrape: a standing queue
        is how a loop too busy to accept shows."""
        if sys.platform != "linux":  # (other kernels' `tcp_info` is laid out otherwise)
            return 0
        queued = 0
        for sock in self.sockets:
            if sock.fileno() >= 0:
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
                queued += _TCP_INFO_QUEUED.unpack_from(info)[0]
        return queued

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nothing more pending
            except OSError as e:
                if e.errno not in _OUT_OF_DESCRIPTORS:
                    continue  # that connection is gone (reset before it was accepted)
                log.error(
                    "out of file descriptors; accepting again shortly",
                    error=str(e), pause_s=OUT_OF_DESCRIPTORS_PAUSE_S,
                )  # fmt: skip
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(OUT_OF_DESCRIPTORS_PAUSE_S, self._resume, sock)
                return
            handing = self._loop.create_task(
                self._loop.connect_accepted_socket(self._factory, connection, **self._tls)
            )
            self._handing.add(handing)
            handing.add_done_callback(self._handed)

    def _handed(self, handing: asyncio.Task[Any]) -> None:
        self._handing.discard(handing)
        if not handing.cancelled() and (e := handing.exception()) is not None:
            # (a connection reset at once, a TLS handshake that failed: the client's to see)
            log.debug("connection not opened", error=repr(e))

    def _resume(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:  # (not closed meanwhile)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening; open connections are left to their application."""
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()


def _listening(family: int, address: tuple[object, ...], backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # (an IPv4 address is bound on its own socket)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        # (the address, as asyncio's create_server says it: the operator's first question)
        raise OSError(e.errno, f"cannot listen on {address[0]}:{address[1]}: {e.strerror}") from e
    return sock
