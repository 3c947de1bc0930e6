"""Running the daemon: service + HTTP server (+ TLS) + API keys + signal handling."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord.api.access import is_loopback
from orchestratord.api.app import build_app
from orchestratord.api.connections import DROP_REASONS, ConnectionGuard, raise_fd_limit
from orchestratord.api.listener import Listener
from orchestratord.api.standby import standby_app
from orchestratord.config import Config
from orchestratord.keyring import KeyFileError, KeyRing
from orchestratord.leadership import Leadership, holder_name
from orchestratord.server_config import ServerConfig
from orchestratord.service import Orchestrator
from orchestratord.store import StoreError, open_store, shared
from orchestratord.store.lease import LeaderLease
from orchestratord.telemetry import Metrics, tracing
from pool_managerd.hub import TlsFiles
from pool_managerd.hub import serve as serve_agents

log = structlog.get_logger("orchestratord")


class Daemon:
    """The service and its HTTP server, started and stopped together.

    On a shared store (PostgreSQL) the service runs only while this daemon leads: each term
    starts a fresh service — the same recovery as a restart — under the term's epoch, and
    ends it when the lease is lost; between terms the standby application answers
    (`api.standby`). The listening socket stays open throughout; its connection factory is
    pointed at whichever application serves now.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.service: Orchestrator | None = None
        self.runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._guard: ConnectionGuard | None = None
        self.port: int = config.server.port
        #: The agents' gRPC server and its port, when agents may join.
        self._agents_server: Any = None
        self.agents_port: int | None = None
        self.keys = KeyRing()
        #: Leader election, on a shared store.
        self.leadership: Leadership | None = None
        self._standby: web.AppRunner | None = None
        self._terms: asyncio.Task[None] | None = None
        self._closing = False
        #: Set while this daemon leads and its service serves (cleared between terms).
        self.leading = asyncio.Event()
        #: Set when the daemon must stop (a signal, or a failure it cannot serve past:
        #: `broken` says which).
        self.stopping = asyncio.Event()
        self.broken: str | None = None

    async def start(self) -> None:
        """Start the service (or, on a shared store, stand by for leadership) and listen.
        Raises KeyFileError or RuntimeError (one line) for keys that cannot be used,
        StoreError for a store that cannot."""
        self.keys = api_keys(self.config.server)
        if not shared(self.config):
            await self._lead(None)
            await self._listen()
            self.leading.set()
            return
        store = self.config.store
        lease = LeaderLease(store.url, holder_name(), "", store.lease_s)
        await asyncio.to_thread(lease.open)  # reachable and migrated, or serve exits 2
        standing_by = Metrics()
        standing_by.set_leader(False)
        self._standby = web.AppRunner(
            standby_app(lambda: self.leadership.leader_url if self.leadership else None,
                        standing_by),
            access_log=None, handle_signals=False, shutdown_timeout=1.0,
        )  # fmt: skip
        await self._standby.setup()
        await self._listen()
        lease.advertise(self.config.server.advertise_url or self.url)
        self.leadership = Leadership(lease, store.lease_s)
        self._terms = asyncio.create_task(self._run_terms(self.leadership))
        self._terms.add_done_callback(self._terms_ended)

    def _terms_ended(self, terms: asyncio.Task[None]) -> None:
        if not terms.cancelled() and terms.exception() is not None:
            self.broken = f"leadership failed: {terms.exception()!r}"
            self.stopping.set()

    async def _listen(self) -> None:
        server = self.config.server
        serving = self.runner if self.runner is not None else self._standby
        assert serving is not None and serving.server is not None
        limit = raise_fd_limit(server.max_connections)
        self._guard = ConnectionGuard(serving.server, server, limit)
        # A large backlog: bursts of connects must not drop SYNs (see PERFORMANCE.md);
        # aiohttp sets TCP_NODELAY on every accepted connection. A TLS handshake is the
        # start of a request's head, and has its time (the guard's timers start after it).
        self._listener = await Listener.bind(
            self._guard, server.host, self.port, backlog=4096, tls=tls_context(server),
            tls_handshake_timeout_s=server.header_timeout_s,
        )  # fmt: skip
        self.port = self._listener.port  # the port bound, when 0
        log.info("listening", url=self.url, pools=[p.id for p in self.config.pools])

    async def _run_terms(self, leadership: Leadership) -> None:
        """Lead whenever the lease is ours; stand by otherwise; until the daemon stops."""
        while not self._closing:
            epoch = await leadership.acquire()
            try:
                await self._lead(epoch)
            except StoreError as e:  # let another daemon try, and try again in a while
                log.error("cannot lead: the store cannot be used", error=str(e))
                leadership.lose(str(e))
                await leadership.hold()
                await leadership.resign(epoch)
                await asyncio.sleep(leadership.poll_s)
                continue
            log.info("leading", epoch=epoch, lease_s=leadership.lease_s)
            self.leading.set()
            why = await leadership.hold()
            if self._closing:  # `stop` winds the service down itself
                return
            await self._step_down(why)

    async def _lead(self, epoch: int | None) -> None:
        """Start a service (under `epoch` on a shared store) and serve its application."""
        leading = self.leadership.valid if self.leadership is not None else None
        service = Orchestrator(
            self.config, store=open_store(self.config, epoch), may_dispatch=leading
        )
        if self.leadership is not None:
            service.store.on_unusable = self.leadership.lose
        await service.start()
        service.metrics.set_leader(True)
        # handler_cancellation: a client that goes away cancels its handler at once, so a
        # streamed request's task is canceled (or waits for a resume) without delay
        runner = web.AppRunner(
            build_app(service, self.keys, leading), access_log=None, handle_signals=False,
            shutdown_timeout=1.0, handler_cancellation=True,
        )  # fmt: skip
        await runner.setup()
        assert runner.server is not None
        self.service, self.runner = service, runner
        if self._guard is not None:
            self._guard.serve(runner.server)
        service.metrics.watch_connections(
            lambda: self._guard.open if self._guard else 0,
            lambda: self._listener.waiting() if self._listener else 0,
            lambda reason: self._guard.dropped[reason] if self._guard else 0,
            DROP_REASONS,
        )
        await self._serve_agents(service)

    async def _step_down(self, why: str) -> None:
        """The term is over: hand the socket to the standby application, make no write,
        end every stream (its clients follow the leader), stop the engines."""
        log.warning("stepping down", why=why)
        self.leading.clear()
        service, runner = self.service, self.runner
        self.service = self.runner = None
        assert self._guard is not None and self._standby is not None
        assert self._standby.server is not None
        self._guard.serve(self._standby.server)
        if service is not None:
            service.store.abandon(f"not the leader any more: {why}")
            await service.shutdown(0, f"this daemon stepped down: {why}", ErrorCode.NOT_LEADER)
        await self._stop_agents()
        if runner is not None:
            await runner.cleanup()

    async def _serve_agents(self, service: Orchestrator) -> None:
        remote = service.remote
        if remote is None:
            return
        agents = remote.config
        t = agents.tls
        tls = TlsFiles(t.cert, t.key, t.client_ca) if t is not None else None
        self._agents_server, self.agents_port = await serve_agents(remote.hub, agents.listen, tls)
        host = agents.listen.rsplit(":", 1)[0]
        scheme = "grpcs" if tls else "grpc"
        log.info("agents may join", url=f"{scheme}://{host}:{self.agents_port}")
        if tls is None and not is_loopback(host):
            log.warning(
                "agents join in plaintext beyond loopback: the join token travels "
                "unencrypted (set server.agents.tls)"
            )

    async def _stop_agents(self) -> None:
        if self._agents_server is not None:  # agents reconnect to the next control plane
            await self._agents_server.stop(grace=None)
            self._agents_server = None

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
        """Drain (a leader keeps renewing its lease meanwhile), then give the lease up so a
        standby takes over at once."""
        self._closing = True
        leadership = self.leadership
        if self._terms is not None and (leadership is None or leadership.epoch is None):
            self._terms.cancel()  # standing by (or between terms): nothing to drain
        if self.service is not None:
            grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
            await self.service.shutdown(grace)
        if self._terms is not None and leadership is not None:
            epoch = leadership.epoch
            self._terms.cancel()
            await asyncio.gather(self._terms, return_exceptions=True)
            if epoch is not None:
                await leadership.resign(epoch)
            leadership.close()
        await self._stop_agents()
        if self._listener is not None:
            self._listener.close()
        for runner in (self.runner, self._standby):
            if runner is not None:
                await runner.cleanup()
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


#: Allocations between two young collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 7_000


def _tune_gc() -> None:
    """A task allocates a few hundred short-lived objects, so at CPython's default
    threshold a young collection ran every few tasks and a full one, every hundred young
    ones, walked every object the daemon holds — retained tasks included: ~8 % of the
    daemon's CPU under load (docs/BENCHMARKS.md). What exists once the daemon has started
    (modules, config, the application) lives as long as the process: freeze it out of every
    collection; and collect the young generation ten times less often. Cycles are still
    collected, in the same generations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def serve(config: Config, on_ready: Callable[[Daemon], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully and return."""
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_keys)
    if tracing.configure_from_env():
        log.info("tracing to OTLP (OTEL_* environment)")
    await daemon.start()
    _tune_gc()
    if on_ready is not None:
        on_ready(daemon)
    await daemon.stopping.wait()
    if daemon.broken is None:
        log.info("signal received; draining", grace_s=config.server.shutdown_grace_s)
    await daemon.stop()
    tracing.shutdown()
    if daemon.broken is not None:
        raise RuntimeError(daemon.broken)
