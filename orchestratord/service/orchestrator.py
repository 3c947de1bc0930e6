"""`Orchestrator`: the service as the API sees it — every operation the HTTP layer offers,
in domain terms. It wires the stages (admission → one dispatcher per pool → runners → the
task book), owns the daemon's lifecycle, and raises `Refusal` for anything it declines; it
never chooses an HTTP status or header.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.sessions import SessionTable
from orchestratord import api_models as api
from orchestratord.config import Config, PoolConfig
from orchestratord.engines import launcher_for
from orchestratord.service import views
from orchestratord.service.admission import Admission
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.refusal import Refusal
from orchestratord.service.runner import RunLimits
from orchestratord.service.tasks import TaskBook, TaskRecord
from orchestratord.telemetry import Metrics
from pool_managerd.launchers import Launcher

log = structlog.get_logger("orchestratord")

LauncherFactory = Callable[[PoolConfig], Launcher]


class Orchestrator:
    """Constructed inside the running event loop, which owns all of its state."""

    def __init__(
        self,
        config: Config,
        launchers: LauncherFactory = launcher_for,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.accepting = True
        loop = asyncio.get_running_loop()

        def now_ms() -> float:  # the event loop's monotonic clock, in ms
            return loop.time() * 1000.0

        self.now_ms = now_ms
        server = config.server
        self.book = TaskBook(
            self.metrics, now_ms, retention_s=server.retention_s,
            max_retained=server.max_retained_tasks,
        )  # fmt: skip
        self.sessions = SessionTable()
        self.pools: dict[str, PoolDispatcher] = {
            pc.id: PoolDispatcher(
                pc, launchers(pc), book=self.book, sessions=self.sessions, metrics=self.metrics,
                limits=RunLimits(pc.token_timeout_s, server.max_output_bytes), now_ms=now_ms,
            )
            for pc in config.pools
        }  # fmt: skip
        self.admission = Admission(
            self.pools, self.book, self.metrics, now_ms,
            stream_buffer_events=server.stream_buffer_events,
        )  # fmt: skip

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()

    def active_count(self) -> int:
        return sum(pool.active() for pool in self.pools.values())

    def ready(self) -> bool:
        """Admitting, and some replica is Ready."""
        return self.accepting and any(p.manager.ready for p in self.pools.values())

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting; let queued and running tasks finish for up to `grace_s`; then end
        the rest with a typed, retriable error; stop every engine."""
        self.accepting = False
        log.info("shutting down", grace_s=grace_s, active=self.active_count())
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(p.wait_idle() for p in self.pools.values()))
        except TimeoutError:
            pass
        for pool in self.pools.values():
            pool.abort("the daemon is shutting down")
        await asyncio.gather(*(p.stop() for p in self.pools.values()))
        self.book.close()

    # -- tasks ---------------------------------------------------------------------

    def submit(
        self, req: api.TaskRequest, *, tenant: str, correlation_id: str
    ) -> api.AdmissionResponse:
        if not self.accepting:
            raise Refusal(ErrorCode.POOL_UNAVAILABLE, "the daemon is shutting down")
        task_id = str(req.task_id or uuid.uuid4())
        rec = self.admission.admit(
            req, task_id=task_id, tenant=tenant, correlation_id=correlation_id
        )
        return api.AdmissionResponse(
            task_id=task_id, queue_position=rec.queue_position,
            predicted_start_ms=rec.predicted_start_ms, stream_url=f"/v1/tasks/{task_id}/stream",
        )  # fmt: skip

    def task(self, task_id: str) -> TaskRecord:
        rec = self.book.get(task_id)
        if rec is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no task {task_id!r} (unknown or expired)")
        return rec

    def status(self, task_id: str) -> api.TaskStatus:
        rec = self.task(task_id)
        return views.task_status(rec, self.pools[rec.task.pool_id])

    def events(self, task_id: str, after: int | None = None) -> AsyncIterator[bytes]:
        """The task's SSE frames after event `after` (all when None), as they come; the
        iterator raises StreamGap when those events are no longer retained."""
        return self.task(task_id).stream.read(after)

    def cancel(self, task_id: str) -> None:
        """Cancel a task; idempotent. No token event follows once this returns."""
        rec = self.task(task_id)
        self.pools[rec.task.pool_id].cancel(rec)

    def forget(self, task_id: str) -> None:
        """Drop a finished task's record before its retention ends."""
        self.book.forget(task_id)

    # -- sessions ------------------------------------------------------------------

    def session(self, session_id: str) -> api.SessionInfo:
        now = self.now_ms()
        info = self.sessions.get(session_id, now)
        if info is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no session {session_id!r}")
        ttl = max(0, round(self.sessions.ttl_ms - (now - info.last_used_ms)))
        return views.session_info(session_id, info, ttl, self.sessions.kv_warmth(info, now))

    def delete_session(self, session_id: str) -> None:
        self.sessions.delete(session_id)

    # -- pools ---------------------------------------------------------------------

    def pool(self, pool_id: str) -> PoolDispatcher:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no pool {pool_id!r}")
        return pool

    def pool_list(self) -> api.PoolList:
        return api.PoolList(pools=[views.pool_info(p) for p in self.pools.values()])

    def pool_info(self, pool_id: str) -> api.PoolInfo:
        return views.pool_info(self.pool(pool_id))

    def pool_health(self, pool_id: str) -> api.PoolHealth:
        return views.pool_health(self.pool(pool_id))

    def capabilities(self) -> api.CapabilitiesResponse:
        return views.capabilities(self.pools.values())

    def drain(self, pool_id: str, deadline_ms: int) -> None:
        self.pool(pool_id).drain(deadline_ms)

    def reload(self, pool_id: str, model: str) -> None:
        """Start swapping the pool's model; `pool(id).reload_task` follows it."""
        self.pool(pool_id).start_reload(model)
