"""Running the daemon: service + HTTP server + signal handling."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import structlog
from aiohttp import web

from orchestratord.api.app import build_app
from orchestratord.api.connections import ConnectionGuard, raise_fd_limit
from orchestratord.config import Config
from orchestratord.engines import launcher_for
from orchestratord.service import LauncherFactory, Orchestrator

log = structlog.get_logger("orchestratord")


class Daemon:
    """The service and its HTTP server, started and stopped together."""

    def __init__(self, config: Config, launchers: LauncherFactory = launcher_for) -> None:
        self.config = config
        self.launchers = launchers
        self.service: Orchestrator | None = None
        self.runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port: int = config.server.port

    async def start(self) -> None:
        self.service = Orchestrator(self.config, self.launchers)
        await self.service.start()
        # handler_cancellation: a client that goes away cancels its handler at once, so a
        # streamed request's task is canceled (or waits for a resume) without delay
        self.runner = web.AppRunner(
            build_app(self.service), access_log=None, handle_signals=False,
            shutdown_timeout=1.0, handler_cancellation=True,
        )  # fmt: skip
        await self.runner.setup()
        assert self.runner.server is not None
        server = self.config.server
        guard = ConnectionGuard(self.runner.server, server, raise_fd_limit(server.max_connections))
        self.service.metrics.watch_connections(lambda: guard.open)
        host = server.host
        # A large backlog: bursts of connects must not drop SYNs (see PERFORMANCE.md);
        # aiohttp sets TCP_NODELAY on every accepted connection.
        self._listener = await asyncio.get_running_loop().create_server(
            guard, host, self.port, backlog=4096, reuse_address=True
        )
        self.port = self._listener.sockets[0].getsockname()[1]  # the port bound, when 0
        log.info(
            "listening", url=f"http://{host}:{self.port}", pools=[p.id for p in self.config.pools]
        )

    async def stop(self, grace_s: float | None = None) -> None:
        if self.service is not None:
            grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
            await self.service.shutdown(grace)
        if self._listener is not None:
            self._listener.close()
        if self.runner is not None:
            await self.runner.cleanup()
        log.info("stopped")


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully and return."""
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    await stop.wait()
    log.info("signal received; draining", grace_s=config.server.shutdown_grace_s)
    await daemon.stop()
