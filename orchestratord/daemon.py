"""Running the daemon: service + HTTP server (+ TLS) + API keys + signal handling."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from orchestratord.api.access import is_loopback
from orchestratord.api.app import build_app
from orchestratord.api.connections import ConnectionGuard, raise_fd_limit
from orchestratord.config import Config, ServerConfig
from orchestratord.keyring import KeyFileError, KeyRing
from orchestratord.service import Orchestrator
from orchestratord.telemetry import tracing
from pool_managerd.hub import TlsFiles
from pool_managerd.hub import serve as serve_agents

log = structlog.get_logger("orchestratord")


class Daemon:
    """The service and its HTTP server, started and stopped together."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service: Orchestrator | None = None
        self.runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.port: int = config.server.port
        #: The agents' gRPC server and its port, when agents may join.
        self._agents_server: Any = None
        self.agents_port: int | None = None
        self.keys = KeyRing()

    async def start(self) -> None:
        """Start the service and listen. Raises KeyFileError or RuntimeError (one line) for
        keys that cannot be used, StoreError for a store that cannot."""
        self.keys = api_keys(self.config.server)
        self.service = Orchestrator(self.config)
        await self.service.start()
        # handler_cancellation: a client that goes away cancels its handler at once, so a
        # streamed request's task is canceled (or waits for a resume) without delay
        self.runner = web.AppRunner(
            build_app(self.service, self.keys), access_log=None, handle_signals=False,
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
            guard, host, self.port, backlog=4096, reuse_address=True, ssl=tls_context(server)
        )
        self.port = self._listener.sockets[0].getsockname()[1]  # the port bound, when 0
        log.info("listening", url=self.url, pools=[p.id for p in self.config.pools])
        remote = self.service.remote
        if remote is not None:
            agents = remote.config
            t = agents.tls
            tls = TlsFiles(t.cert, t.key, t.client_ca) if t is not None else None
            self._agents_server, self.agents_port = await serve_agents(
                remote.hub, agents.listen, tls
            )
            host = agents.listen.rsplit(":", 1)[0]
            scheme = "grpcs" if tls else "grpc"
            log.info("agents may join", url=f"{scheme}://{host}:{self.agents_port}")
            if tls is None and not is_loopback(host):
                log.warning(
                    "agents join in plaintext beyond loopback: the join token travels "
                    "unencrypted (set server.agents.tls)"
                )

    @property
    def url(self) -> str:
        scheme = "https" if self.config.server.tls else "http"
        return f"{scheme}://{self.config.server.host}:{self.port}"

    def reload_keys(self) -> None:
        """SIGHUP: read the key file again; a file that cannot be used leaves the keys as
        they were."""
        try:
            count = self.keys.reload()
        except KeyFileError as e:
            log.error("key file not reloaded; the previous keys stay", error=str(e))
            return
        log.info("key file reloaded", keys=count)

    async def stop(self, grace_s: float | None = None) -> None:
        if self.service is not None:
            grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
            await self.service.shutdown(grace)
        if self._agents_server is not None:  # agents reconnect to the next control plane
            await self._agents_server.stop(grace=None)
        if self._listener is not None:
            self._listener.close()
        if self.runner is not None:
            await self.runner.cleanup()
        log.info("stopped")


def api_keys(server: ServerConfig) -> KeyRing:
    """The keys `server` configures: its key file's, and the one `api_key_env` names."""
    env_key = None
    if server.api_key_env:
        env_key = os.environ.get(server.api_key_env)
        if not env_key:
            raise RuntimeError(f"server.api_key_env: ${server.api_key_env} is not set")
    path = Path(server.keys_file).expanduser() if server.keys_file else None
    if path is not None and not path.exists():  # nobody could ever get in
        raise KeyFileError(
            f"server.keys_file: {path} does not exist; make it with "
            f"`orchestratord keys create --file {path} --tenant ops --role admin`"
        )
    return KeyRing(path, env_key)


def tls_context(server: ServerConfig) -> ssl.SSLContext | None:
    if server.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.tls.cert, server.tls.key)
    return context


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully and return."""
    daemon = Daemon(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_keys)
    if tracing.configure_from_env():
        log.info("tracing to OTLP (OTEL_* environment)")
    await daemon.start()
    if on_ready is not None:
        on_ready(daemon)
    await stop.wait()
    log.info("signal received; draining", grace_s=config.server.shutdown_grace_s)
    await daemon.stop()
    tracing.shutdown()
