"""`Orchestrator`: the service as the API sees it — every operation the HTTP layer offers,
in domain terms. It wires the stages (admission → one dispatcher per pool → runners → the
task book), owns the daemon's lifecycle, and raises `Refusal` for anything it declines; it
never chooses an HTTP status or header.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestrator_core.sessions import SessionTable
from orchestratord import agent_models as agent_api
from orchestratord import api_models as api
from orchestratord import openai_models as oai
from orchestratord.config import Config, PoolConfig
from orchestratord.engines import ENGINES
from orchestratord.principals import Principal
from orchestratord.service import views
from orchestratord.service.admission import Admission, Submission
from orchestratord.service.batches import Batches
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.quotas import Quotas
from orchestratord.service.records import TaskRecord, session_key
from orchestratord.service.recovery import recover
from orchestratord.service.refusal import Refusal
from orchestratord.service.replicas import RemoteReplicas
from orchestratord.service.runner import RunLimits
from orchestratord.service.streams import StreamLimits
from orchestratord.service.tasks import TaskBook
from orchestratord.store import StoreError, TaskStore, open_store
from orchestratord.telemetry import Metrics, tracing
from orchestratord.telemetry.loop_lag import LoopLag

log = structlog.get_logger("orchestratord")

#: The states a task listing shows unless asked for others.
LIVE = frozenset({TaskState.QUEUED, TaskState.RUNNING})


class Orchestrator:
    """Constructed inside the running event loop, which owns all of its state."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        store: TaskStore | None = None,
        may_dispatch: Callable[[], bool] | None = None,
    ) -> None:
        """`may_dispatch`: read before every dispatch — False while this daemon's lease is
        in doubt (None: it is the only daemon)."""
        self.config = config
        self.metrics = metrics or Metrics()
        self._loop_lag = LoopLag(self.metrics.on_loop_lag)
        self.store = store or open_store(config)
        self.accepting = True
        #: Wall-clock start, unix seconds (the `created` of `GET /v1/models`).
        self.started = int(time.time())
        loop = asyncio.get_running_loop()

        def now_ms() -> float:  # the event loop's monotonic clock, in ms
            return loop.time() * 1000.0

        self.now_ms = now_ms
        server = config.server
        self.streams = StreamLimits(server.stream_buffer_events, server.stream_buffer_bytes)
        self.book = TaskBook(
            self.metrics, now_ms, self.store, retention_s=server.retention_s,
            max_retained=server.max_retained_tasks, budget_bytes=server.memory_budget_bytes,
            streams=self.streams, max_output_bytes=server.max_output_bytes,
        )  # fmt: skip
        self.metrics.watch_memory(
            server.memory_budget_bytes, lambda: self.book.live_bytes,
            lambda: self.book.retained_bytes,
        )  # fmt: skip
        self.sessions = SessionTable()
        #: The agents' hub and remote pools, when agents may join (`server.agents`).
        self.remote = RemoteReplicas(server.agents, self.metrics) if server.agents else None
        self.pools: dict[str, PoolDispatcher] = {
            pc.id: PoolDispatcher(
                pc, self.remote, book=self.book, sessions=self.sessions, metrics=self.metrics,
                limits=RunLimits(pc.token_timeout_s, server.max_output_bytes), now_ms=now_ms,
                may_dispatch=may_dispatch,
            )
            for pc in config.pools
        }  # fmt: skip
        self.admission = Admission(
            self.pools, self.book, self.metrics, now_ms, streams=self.streams
        )
        self.quotas = Quotas(now_ms)
        self.batches = Batches(
            self.store, self.admission, self.pools, self.book, self.metrics, config.batch
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, bring back the tasks it journaled, start every pool. Raises
        StoreError (one clear line) if the store cannot be used."""
        self.store.on_commit = self.metrics.on_store_commit
        snapshot = await self.store.open()
        server = self.config.server
        self.batches.load(snapshot)
        await self.batches.fetch_inputs()
        recovered = recover(
            snapshot.tasks, self.pools, self.book, self.now_ms, retention_s=server.retention_s,
            streams=self.streams,
        )  # fmt: skip
        for pool in self.pools.values():
            pool.start()
        # after the pools start: their replicas exist (starting), so feeding admits lines
        self.batches.resume(recovered.batch_items)
        for rec in recovered.unread:
            self._abandon_unless_read(rec)
        self._loop_lag.start()  # (last: a start that failed leaves no timer behind)

    def active_count(self) -> int:
        return sum(pool.active() for pool in self.pools.values())

    def ready(self) -> bool:
        """Admitting, the store writable, and some replica is Ready."""
        return (
            self.accepting
            and self.store.healthy
            and any(p.manager.ready for p in self.pools.values())
        )

    async def shutdown(
        self, grace_s: float, why: str = "the daemon is shutting down",
        code: ErrorCode = ErrorCode.POOL_UNAVAILABLE,
    ) -> None:  # fmt: skip
        """Stop admitting; let queued and running tasks finish for up to `grace_s`; then end
        the rest with the retriable `code`, saying `why`; stop every engine."""
        self.accepting = False
        self.book.closing = True
        self.batches.pause()
        log.info("shutting down", grace_s=grace_s, active=self.active_count())
        try:
            async with asyncio.timeout(grace_s):
                await asyncio.gather(*(p.wait_idle() for p in self.pools.values()))
        except TimeoutError:
            pass
        for pool in self.pools.values():
            pool.abort(why, code=code)
        await asyncio.gather(*(p.stop() for p in self.pools.values()))
        if self.remote is not None:
            self.remote.hub.close()
        self.book.close()
        await self.store.close()
        self._loop_lag.stop()

    # -- tasks ---------------------------------------------------------------------

    async def submit(self, submission: Submission, by: Principal | None = None) -> TaskRecord:
        """Admit a task (queued, maybe already running) and return once it is durable; or
        raise Refusal. `by`: the key that asks, held to its quotas."""
        if not self.accepting:
            raise Refusal(ErrorCode.POOL_UNAVAILABLE, "the daemon is shutting down")
        if by is not None and (quota := self.quotas.account(by.key_id, by.limits)):
            submission = dataclasses.replace(submission, quota=quota)
        rec = self.admission.admit(submission)
        if rec.durable is not None:
            try:
                await rec.durable  # (cancelling this request leaves it to others: `Durable`)
            except StoreError as e:  # never acknowledged: withdraw it
                self.pools[rec.task.pool_id].cancel(rec, ErrorCode.STORE_UNAVAILABLE, str(e))
                raise Refusal(ErrorCode.STORE_UNAVAILABLE, str(e)) from None
        return rec

    def task(self, task_id: str, viewer: Principal) -> TaskRecord:
        """The task, if `viewer` may see it; another tenant's answers as a task that never
        existed (404), so ids cannot be probed."""
        rec = self.book.get(task_id)
        if rec is not None and viewer.owns(rec.task.tenant):
            return rec
        if rec is None:
            tenant = self.book.expired(task_id)
            if tenant is not None and viewer.owns(tenant):
                raise Refusal(
                    ErrorCode.EXPIRED,
                    f"task {task_id!r} ended and its record is no longer kept (retention "
                    "or the memory budget); its outcome was reported on its stream",
                )
        raise Refusal(ErrorCode.NOT_FOUND, f"no task {task_id!r}")

    def tasks(
        self,
        viewer: Principal,
        *,
        pool_id: str | None = None,
        tenant: str | None = None,
        states: frozenset[TaskState] | None = None,
        limit: int,
    ) -> api.TaskList:
        """The tasks `viewer` may see in `states` (None: queued and running), of one pool
        and one tenant or all; the oldest `limit` of them by admission, oldest first."""
        states = states or LIVE
        matching = [
            rec for rec in self.book
            if rec.task.state in states and viewer.owns(rec.task.tenant)
            and (pool_id is None or rec.task.pool_id == pool_id)
            and (tenant is None or rec.task.tenant == tenant)
        ]  # fmt: skip
        oldest = heapq.nsmallest(limit, matching, key=lambda rec: rec.admitted_at)
        now = self.now_ms()
        return api.TaskList(
            tasks=[views.task_summary(rec, self.queue_position(rec), now) for rec in oldest],
            truncated=len(matching) > limit,
        )

    def status(self, task_id: str, viewer: Principal) -> api.TaskStatus:
        rec = self.task(task_id, viewer)
        return views.task_status(rec, self.queue_position(rec))

    def queue_position(self, rec: TaskRecord) -> int | None:
        """Where a queued task stands (0: next); None once it left the queue."""
        pool = self.pools.get(rec.task.pool_id)  # a task recovered for a pool since removed
        return pool.queue.position(rec.task.id) if pool is not None else None

    @contextmanager
    def reading(self, rec: TaskRecord) -> Iterator[None]:
        """Count a stream reader of `rec` while it reads. A task whose stream is its
        request's answer is canceled when its last reader leaves before the end and none
        comes back within `abandon_grace_s` (a Last-Event-ID resume); a finished task's
        stream is compacted when its last reader leaves (`TaskBook.compact`)."""
        rec.readers += 1
        try:
            yield
        finally:
            rec.readers -= 1
            if not rec.readers and rec.ended:
                self.book.compact(rec)
            self._abandon_unless_read(rec)

    def _abandon_unless_read(self, rec: TaskRecord) -> None:
        """Cancel `rec`, whose stream is its request's answer, if it has no reader now and
        none comes back within `abandon_grace_s`."""
        if rec.cancel_when_abandoned and not rec.readers and not rec.ended:
            grace = self.config.server.abandon_grace_s
            if grace:
                asyncio.get_running_loop().call_later(grace, self._cancel_abandoned, rec)
            else:
                self._cancel_abandoned(rec)

    def _cancel_abandoned(self, rec: TaskRecord) -> None:
        if not rec.readers and not rec.ended:
            log.info(
                "client went away; canceling", task_id=rec.task.id, **tracing.log_ids(rec.spans)
            )
            self.pools[rec.task.pool_id].cancel(rec)

    def cancel(self, task_id: str, viewer: Principal) -> None:
        """Cancel a task; idempotent. No token event follows once this returns."""
        rec = self.task(task_id, viewer)
        self.pools[rec.task.pool_id].cancel(rec)

    def forget(self, task_id: str) -> None:
        """Drop a finished task's record before its retention ends."""
        self.book.forget(task_id)

    # -- sessions ------------------------------------------------------------------

    def session(self, session_id: str, viewer: Principal) -> api.SessionInfo:
        """A session of the viewer's tenant (sessions are named within a tenant)."""
        now = self.now_ms()
        info = self.sessions.get(session_key(viewer.tenant, session_id), now)
        if info is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no session {session_id!r}")
        ttl = max(0, round(self.sessions.ttl_ms - (now - info.last_used_ms)))
        return views.session_info(session_id, info, ttl, self.sessions.kv_warmth(info, now))

    def delete_session(self, session_id: str, viewer: Principal) -> None:
        self.sessions.delete(session_key(viewer.tenant, session_id))

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

    def agent_list(self) -> agent_api.AgentList:
        return views.agent_list(self.remote, self.now_ms() / 1000.0)

    def stop_agent(self, agent_id: str) -> None:
        """Ask a connected agent to stop its engines (in the background; its latest
        command in `GET /v1/agents` says how it went)."""
        agent = self.remote.hub.agents.get(agent_id) if self.remote else None
        if self.remote is None or agent is None:
            raise Refusal(ErrorCode.NOT_FOUND, f"no agent {agent_id!r}", field="agent_id")
        if not agent.connected:
            raise Refusal(
                ErrorCode.CONFLICT,
                f"agent {agent_id!r} is not connected (its engines stop with it): "
                f"{agent.lost_reason}",
            )
        self.remote.stop_agent(agent)

    def capabilities(self) -> api.CapabilitiesResponse:
        return views.capabilities(self.pools.values())

    def models(self) -> oai.ModelList:
        return views.models(self.pools.values(), self.started)

    def model(self, model: str) -> oai.ModelCard:
        """The card of one served model (`GET /v1/models/{model}`); else UNKNOWN_MODEL."""
        cards = self.models().data
        for card in cards:
            if card.id == model:
                return card
        known = ", ".join(card.id for card in cards)  # (as admission names them)
        why = f"model {model!r} is not served; known models: {known}"
        raise Refusal(ErrorCode.UNKNOWN_MODEL, why, field="model")

    def drain(self, pool_id: str, deadline_ms: int) -> None:
        self.pool(pool_id).drain(deadline_ms)

    def resume(self, pool_id: str) -> None:
        """Undo a drain (idempotent)."""
        self.pool(pool_id).resume()

    def reload(self, pool_id: str, model: str, *, resume: bool = False) -> None:
        """Start swapping the pool's model to `model` — a name its config knows, or for
        managed llama.cpp a GGUF path under `server.model_dirs`; `pool(id).reload_task`
        follows it. A drained pool stays drained unless `resume`."""
        pool = self.pool(pool_id)
        if pool.reloading:
            raise Refusal(
                ErrorCode.CONFLICT,
                f"pool {pool_id!r} is already reloading; ask again once it has settled "
                f"(GET /v1/pools/{pool_id})",
                pool_id=pool_id,
            )
        target = reload_target(pool.config, model, self.config.server.model_dirs)
        pool.start_reload(target, resume=resume)


def reload_target(pool: PoolConfig, model: str, model_dirs: list[str]) -> str:
    """What the engine loads when `pool` reloads to `model`: a name its config knows, or for
    managed llama.cpp an absolute GGUF path under one of `model_dirs` (symlinks resolved).
    Anything else is refused with one message that says nothing about the filesystem."""
    refs = pool.model_refs()
    if model in refs:
        return refs[model]
    takes_paths = pool.replicas.managed is not None and ENGINES[pool.engine].needs_model_path
    path = Path(model)
    if takes_paths and path.is_absolute():
        resolved = path.resolve()
        for root in model_dirs:
            if resolved.is_relative_to(Path(root).expanduser().resolve()):
                return str(resolved)
    where = " or a GGUF path under server.model_dirs" if takes_paths else ""
    raise Refusal(
        ErrorCode.INVALID_PARAMS,
        f"pool {pool.id!r} may reload to one of {sorted(refs)}{where}",
        field="model", pool_id=pool.id,
    )  # fmt: skip
