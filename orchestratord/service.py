"""The orchestrator service: admission → queue → dispatch → task streams.

One owner of all queue state (the event loop; everything here runs on it). Dispatch is a
synchronous `pump` of a pool, called exactly when something changed — a task arrived, a
slot was released, a replica became Ready, a deadline timer fired — never by polling. The
pump asks the core which queued task goes to which free slot, takes a slot lease, and
starts a runner that relays the engine's stream into the task's `TaskStream`.

Every accepted task ends in exactly one terminal state, reported on its stream (`end` or
`error`) and by `status`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from math import ceil

import structlog

from orchestrator_core.admission import AdmissionRequest, Denied, PoolView, check, resolve_pool
from orchestrator_core.dispatch import next_dispatch
from orchestrator_core.errors import RETRIABLE, ErrorCode
from orchestrator_core.estimator import ServiceEstimator
from orchestrator_core.model import (
    PRIORITIES,
    Determinism,
    Placement,
    PlacementMode,
    Priority,
    Task,
    TaskState,
)
from orchestrator_core.queue import Admitted, PoolQueue, QueuePolicy
from orchestrator_core.sessions import SessionTable
from orchestratord import api_models as api
from orchestratord.config import Config, PoolConfig
from orchestratord.metrics import Metrics
from orchestratord.streams import TaskStream
from pool_managerd.launchers import Launcher
from pool_managerd.pool import PoolManager, PoolSpec, ReloadFailed
from pool_managerd.replica import Lease, Replica, ReplicaState
from worker_adapters.base import AdapterError, GenerateRequest, Token, guard_stalls

log = structlog.get_logger("orchestratord")


class ApiError(Exception):
    """An error answered before a stream starts: HTTP status + envelope (+ headers)."""

    def __init__(
        self,
        status: int,
        code: ErrorCode,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        field: str | None = None,
        pool_id: str | None = None,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.envelope = api.ErrorEnvelope(
            code=code.value, message=message, retriable=code in RETRIABLE, field=field,
            pool_id=pool_id, retry_after_ms=retry_after_ms, policy_label=policy_label,
        )  # fmt: skip
        self.headers = headers or {}


_DENIED_STATUS = {
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.POOL_UNAVAILABLE: 503,
    ErrorCode.DEADLINE_UNMET: 400,
}


@dataclass(eq=False)
class TaskRecord:
    task: Task
    request: api.TaskRequest | None  # dropped once the engine has it (memory)
    pool: PoolRuntime
    stream: TaskStream
    seed: int | None
    correlation_id: str
    admitted_at: float
    queue_position: int = 0
    predicted_start_ms: int = 0
    replica_id: str | None = None
    engine: str | None = None
    tokens_out: int = 0
    tokens_in: int | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finish_reason: str | None = None
    error: api.ErrorEnvelope | None = None
    output: list[str] = field(default_factory=list)
    output_bytes: int = 0
    output_truncated: bool = False
    runner: asyncio.Task[None] | None = None


class PoolRuntime:
    """A pool as the service runs it: its queue, estimator, and replica manager."""

    def __init__(self, config: PoolConfig, manager: PoolManager) -> None:
        self.config = config
        self.id = config.id
        self.manager = manager
        self.queue = PoolQueue(
            config.queue.capacity,
            QueuePolicy(config.queue.policy),
            config.queue.tenant_weights,
        )
        self.estimator = ServiceEstimator()
        self.running: dict[str, TaskRecord] = {}
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.drain_timer: asyncio.TimerHandle | None = None
        self.pumping = False
        managed = config.replicas.managed
        self.configured_ctx = (
            managed.ctx // managed.slots if managed is not None and managed.ctx else None
        )

    @property
    def draining(self) -> bool:
        return self.manager.draining

    def ctx_max(self) -> int | None:
        known = [r.ctx_per_slot for r in self.manager.replicas if r.ctx_per_slot]
        return min(known) if known else self.configured_ctx

    def view(self) -> PoolView:
        serving = [r.snapshot() for r in self.manager.replicas if r.could_serve]
        return PoolView(self.id, self.config.model, self.ctx_max(), self.draining, serving)

    def slot_counts(self) -> tuple[int, int]:
        """(total, busy) slots over Ready replicas; total is at least 1 for estimates."""
        live = [r for r in self.manager.replicas if r.state is ReplicaState.READY]
        return max(sum(r.slots_total for r in live), 1), sum(r.busy for r in live)


LauncherFactory = Callable[[PoolConfig], Launcher]


class Orchestrator:
    def __init__(
        self, config: Config, launcher_for: LauncherFactory, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.sessions = SessionTable()
        self.tasks: dict[str, TaskRecord] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self.pools: dict[str, PoolRuntime] = {}
        for pc in config.pools:
            managed = pc.replicas.managed
            count = managed.count if managed else len(pc.replicas.endpoints or [])
            slots = managed.slots if managed else 0  # attached: as the engine reports
            spec = PoolSpec(
                id=pc.id,
                engine=pc.engine,
                model=(managed.model_path if managed and managed.model_path else pc.model),
                replicas=count,
                slots=1 if pc.determinism == "strict" else slots,
                deterministic=pc.determinism == "strict",
                start_timeout_s=pc.start_timeout_s,
                max_restarts=pc.max_restarts,
                backoff_base_s=pc.restart_backoff_s,
                stats_interval_s=pc.health_interval_s,
            )
            manager = PoolManager(spec, launcher_for(pc), self._on_replica_change(pc.id))
            self.pools[pc.id] = PoolRuntime(pc, manager)

    # -- clock ---------------------------------------------------------------------

    def now_ms(self) -> float:
        return self._loop.time() * 1000.0

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        for pool in self.pools.values():
            pool.manager.start()

    async def shutdown(self, grace_s: float) -> None:
        """Stop admitting; let queued and running tasks finish for up to `grace_s`; then end
        the rest with a typed, retriable error; stop every engine."""
        self.accepting = False
        log.info("shutting down", grace_s=grace_s, active=self.active_count())
        if self.active_count():
            self._idle.clear()
            try:
                async with asyncio.timeout(grace_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        for pool in self.pools.values():
            self._abort_pool(pool, "the daemon is shutting down")
        await asyncio.gather(*(p.manager.stop() for p in self.pools.values()))
        runners = [r.runner for r in self.tasks.values() if r.runner and not r.runner.done()]
        await asyncio.gather(*runners, return_exceptions=True)

    def active_count(self) -> int:
        return sum(len(p.queue) + len(p.running) for p in self.pools.values())

    def _abort_pool(self, pool: PoolRuntime, why: str, *, running: bool = True) -> None:
        """End every queued (and, with `running`, every running) task of `pool` with the
        retriable POOL_UNAVAILABLE."""
        err = api.ErrorEnvelope(
            code=ErrorCode.POOL_UNAVAILABLE.value, message=why, retriable=True, pool_id=pool.id
        )
        canceled = self.metrics.child(self.metrics.tasks_canceled, pool.id, "pool_unavailable")
        for task in list(pool.queue):
            pool.queue.cancel(task.id)
            canceled.inc()
            self._close_with_error(self.tasks[task.id], err)
        for rec in list(pool.running.values()) if running else ():
            rec.task.transition(TaskState.CANCELED, ErrorCode.POOL_UNAVAILABLE)
            canceled.inc()
            self._close_with_error(rec, err)
            if rec.runner is not None:
                rec.runner.cancel()
        self._update_depth(pool)

    # -- admission -----------------------------------------------------------------

    def submit(
        self, req: api.TaskRequest, *, tenant: str, correlation_id: str
    ) -> api.AdmissionResponse:
        if not self.accepting:
            raise ApiError(
                503,
                ErrorCode.POOL_UNAVAILABLE,
                "the daemon is shutting down",
                headers={"Retry-After": "1"},
            )
        task_id = str(req.task_id or uuid.uuid4())
        if task_id in self.tasks:
            raise ApiError(
                400, ErrorCode.INVALID_PARAMS, f"task_id {task_id} already exists", field="task_id"
            )
        placement = Placement(req.placement.mode, req.placement.replica_id)
        if placement.mode is not PlacementMode.AUTO and not placement.replica_id:
            raise ApiError(
                400,
                ErrorCode.INVALID_PARAMS,
                f"placement.replica_id is required with mode {placement.mode.value!r}",
            )
        now = self.now_ms()
        views = [p.view() for p in self.pools.values()]
        prompt_bytes = len(req.prompt.encode())
        pool_for_estimate = self.pools.get(req.placement.pool_id or "")
        bpt = (
            pool_for_estimate.config.bytes_per_token
            if pool_for_estimate
            else next(
                (
                    p.config.bytes_per_token
                    for p in self.pools.values()
                    if p.config.model == req.model
                ),
                4.0,
            )
        )
        areq = AdmissionRequest(
            model=req.model,
            prompt_tokens=ceil(prompt_bytes / bpt),
            max_tokens=req.max_tokens,
            determinism=req.determinism,
            placement=placement,
            pool_id=req.placement.pool_id,
            deadline_ms=now + req.deadline_ms if req.deadline_ms else None,
        )
        resolved = resolve_pool(areq, views)
        if isinstance(resolved, Denied):
            self._deny(resolved, None)
        assert not isinstance(resolved, Denied)
        pool = self.pools[resolved.pool_id]
        priority = req.priority
        ahead = (
            pool.queue.depth(Priority.INTERACTIVE)
            if priority is Priority.INTERACTIVE
            else (pool.queue.depth())
        )
        total, busy = pool.slot_counts()
        denied = check(
            areq,
            resolved,
            ahead=ahead,
            slots_total=total,
            slots_busy=busy,
            estimator=pool.estimator,
            now_ms=now,
        )
        if denied is not None:
            self._deny(denied, pool)

        strict = areq.determinism is Determinism.STRICT or pool.config.determinism == "strict"
        seed = req.seed
        if seed is None and strict:
            seed = random.getrandbits(31)  # reported in `started`, so the run can be replayed
        task = Task(
            id=task_id,
            pool_id=pool.id,
            priority=priority,
            tenant=tenant,
            session_id=req.session_id,
            deadline_ms=areq.deadline_ms,
            determinism=Determinism.STRICT if strict else Determinism.BEST_EFFORT,
            prompt_tokens=areq.prompt_tokens,
            max_tokens=req.max_tokens,
            placement=placement,
        )
        result = pool.queue.offer(task, backoff_ms=pool.estimator.backoff_ms(total))
        if not isinstance(result, Admitted):
            self.metrics.child(self.metrics.tasks_rejected, pool.id, "queue_full").inc()
            self.metrics.child(self.metrics.backpressure, pool.id, pool.config.queue.policy).inc()
            retry_after = max(1, ceil(result.backoff_ms / 1000))
            raise ApiError(
                429,
                ErrorCode.ADMISSION_REJECT,
                f"queue of pool {pool.id!r} is full ({pool.queue.capacity} tasks)",
                headers={"Retry-After": str(retry_after), "X-Backoff-Ms": str(result.backoff_ms)},
                retry_after_ms=result.backoff_ms,
                policy_label=pool.config.queue.policy,
                pool_id=pool.id,
            )
        predicted = pool.estimator.predicted_start_ms(result.position, total, busy)
        rec = TaskRecord(
            task=task, request=req, pool=pool,
            stream=TaskStream(self.config.server.stream_buffer_events),
            seed=seed, correlation_id=correlation_id, admitted_at=now,
            queue_position=result.position, predicted_start_ms=predicted,
        )  # fmt: skip
        self.tasks[task_id] = rec
        self._idle.clear()
        self.metrics.child(self.metrics.tasks_enqueued, pool.id, priority.value).inc()
        if result.evicted is not None:
            self._report_evicted(pool, result.evicted)
        self.pump(pool)
        return api.AdmissionResponse(
            task_id=task_id,
            queue_position=result.position,
            predicted_start_ms=predicted,
            stream_url=f"/v1/tasks/{task_id}/stream",
        )

    def _deny(self, denied: Denied, pool: PoolRuntime | None) -> None:
        status = _DENIED_STATUS.get(denied.code, 400)
        pool_id = pool.id if pool else None
        self.metrics.child(
            self.metrics.tasks_rejected, pool_id or "none", denied.code.value.lower()
        ).inc()
        headers = {"Retry-After": "1"} if status == 503 else None
        raise ApiError(
            status,
            denied.code,
            denied.message,
            headers=headers,
            field=denied.field,
            pool_id=pool_id,
        )

    def _report_evicted(self, pool: PoolRuntime, victim: Task) -> None:
        rec = self.tasks[victim.id]
        self.metrics.child(self.metrics.tasks_rejected, pool.id, "drop_lru").inc()
        self.metrics.child(self.metrics.backpressure, pool.id, pool.config.queue.policy).inc()
        self._close_with_error(rec, api.ErrorEnvelope(
            code=ErrorCode.QUEUE_FULL_DROP_LRU.value,
            message=f"evicted from the full queue of pool {pool.id!r} by a newer task",
            retriable=True, policy_label="drop-lru", pool_id=pool.id,
        ))  # fmt: skip

    # -- dispatch ------------------------------------------------------------------

    def pump(self, pool: PoolRuntime) -> None:
        """Hand free slots to queued tasks until one of them runs out."""
        if pool.pumping:  # a callback inside the pump asked again: the loop covers it
            return
        pool.pumping = True
        try:
            now = self.now_ms()
            while True:
                step = next_dispatch(pool.queue, pool.manager.snapshots(), self.sessions, now)
                for task in step.expired:
                    self._report_expired(pool, task)
                if step.unplaceable is not None:
                    task, reason = step.unplaceable
                    task.transition(TaskState.FAILED, ErrorCode.POOL_UNAVAILABLE)
                    self.metrics.child(
                        self.metrics.placement_decisions, pool.id, reason.value
                    ).inc()
                    self._close_with_error(self.tasks[task.id], api.ErrorEnvelope(
                        code=ErrorCode.POOL_UNAVAILABLE.value, retriable=True, pool_id=pool.id,
                        message=f"no replica can serve this task: {reason.value}",
                    ))  # fmt: skip
                    continue
                if step.task is None:
                    break
                assert step.replica_id is not None
                rec = self.tasks[step.task.id]
                lease = pool.manager.lease(step.replica_id)
                self.metrics.child(self.metrics.placement_decisions, pool.id, "placed").inc()
                pool.running[rec.task.id] = rec
                rec.runner = asyncio.create_task(self._run(rec, lease))
            self._update_depth(pool)
            self._arm_deadline_timer(pool)
        finally:
            pool.pumping = False

    def _arm_deadline_timer(self, pool: PoolRuntime) -> None:
        deadline = pool.queue.next_deadline_ms()
        if pool.deadline_timer is not None:
            pool.deadline_timer.cancel()
            pool.deadline_timer = None
        if deadline is not None:
            # +1 ms: expiry is strict (deadline < now), so wake just after it.
            pool.deadline_timer = self._loop.call_at((deadline + 1) / 1000.0, self.pump, pool)

    def _update_depth(self, pool: PoolRuntime) -> None:
        for p in PRIORITIES:
            self.metrics.child(self.metrics.queue_depth, pool.id, p.value).set(pool.queue.depth(p))

    def _report_expired(self, pool: PoolRuntime, task: Task) -> None:
        self.metrics.child(self.metrics.tasks_rejected, pool.id, "deadline_unmet").inc()
        self._close_with_error(self.tasks[task.id], api.ErrorEnvelope(
            code=ErrorCode.DEADLINE_UNMET.value, retriable=False, pool_id=pool.id,
            message="the deadline passed before a slot was free",
        ))  # fmt: skip

    def _on_replica_change(self, pool_id: str) -> Callable[[Replica, str], None]:
        def changed(replica: Replica, what: str) -> None:
            pool = self.pools[pool_id]
            m = self.metrics
            m.child(m.replica_ready, pool_id, replica.id).set(
                1 if replica.state is ReplicaState.READY else 0
            )
            m.child(m.slots_total, pool_id, replica.id).set(replica.slots_total)
            if what == "restart":
                m.child(m.replica_restarts, pool_id, replica.id).inc()
            if what == "stats":
                if replica.kv_free_fraction is not None:
                    m.child(m.kv_cache_usage, pool_id, replica.id).set(
                        1.0 - replica.kv_free_fraction
                    )
                if replica.engine_busy is not None:
                    m.child(m.engine_busy, pool_id, replica.id).set(replica.engine_busy)
            if what in ("down", "removed"):
                self.sessions.forget_replica(replica.id)
            if what == "ready":
                self.pump(pool)
            if what == "failed" and not pool.manager.could_serve():
                # Nothing will ever serve the queued work: say so instead of letting it hang.
                why = f"no replica of pool {pool_id!r} can start: {pool.manager.last_error}"
                self._abort_pool(pool, why, running=False)

        return changed

    # -- running a task ------------------------------------------------------------

    async def _run(self, rec: TaskRecord, lease: Lease) -> None:
        pool = rec.pool
        replica = lease.replica
        adapter = replica.adapter
        task = rec.task
        req = rec.request
        assert adapter is not None and req is not None
        now = self.now_ms()
        rec.replica_id = replica.id
        rec.engine = replica.engine
        rec.started_at = now
        m = self.metrics
        m.child(m.tasks_started, pool.id, replica.id, replica.engine, replica.engine_version).inc()
        if task.session_id:
            self.sessions.record_turn(task.session_id, replica.id, now)
        rec.stream.emit("started", api.StartedEvent(
            queue_position=rec.queue_position, predicted_start_ms=rec.predicted_start_ms,
            pool_id=pool.id, replica_id=replica.id, engine=replica.engine,
            engine_version=replica.engine_version, seed=rec.seed,
        ).model_dump_json())  # fmt: skip
        strict = task.determinism is Determinism.STRICT
        greq = GenerateRequest(
            prompt=req.prompt, max_tokens=req.max_tokens, seed=rec.seed,
            temperature=req.sampling.temperature, top_p=req.sampling.top_p,
            top_k=req.sampling.top_k, stop=tuple(req.sampling.stop), cache_prompt=not strict,
            priority=0 if task.priority is Priority.INTERACTIVE else 1,
        )  # fmt: skip
        log.debug(
            "dispatched",
            task_id=task.id,
            pool_id=pool.id,
            replica_id=replica.id,
            engine=replica.engine,
            correlation_id=rec.correlation_id,
        )
        end = None
        try:
            stream = guard_stalls(adapter.stream(greq), pool.config.token_timeout_s, replica.engine)
            emit_token = rec.stream.emit_token
            cap = self.config.server.max_output_bytes
            running = TaskState.RUNNING
            async for ev in stream:
                if task.state is not running:
                    break
                if type(ev) is Token:
                    # the hot path: a few attribute updates and one frame
                    if rec.first_token_at is None:
                        rec.first_token_at = self.now_ms()
                    emit_token(rec.tokens_out, ev.text, ev.ids)
                    rec.tokens_out += ev.count
                    if rec.output_bytes < cap:
                        rec.output.append(ev.text)
                        rec.output_bytes += len(ev.text)
                    else:
                        rec.output_truncated = True
                else:
                    end = ev
            if end is not None and task.state is running:
                rec.tokens_in = end.tokens_in
                # the engine's count is authoritative (bytes of a cut-off UTF-8 sequence
                # at the very end are tokens without text)
                rec.tokens_out = max(rec.tokens_out, end.tokens_out)
                task.transition(TaskState.COMPLETED)
                self._close_with_end(rec, end.finish_reason)
        except AdapterError as e:
            if task.state is running:
                self._engine_failed(rec, replica, e)
        except asyncio.CancelledError:
            if task.state is running:  # not a client cancel: the daemon is going away
                task.transition(TaskState.CANCELED, ErrorCode.CANCELED)
                self._close_with_end(rec, "canceled")
            raise
        except Exception as e:  # a bug: never leave the task hanging, never leak a traceback
            log.exception("runner crashed", task_id=task.id, pool_id=pool.id)
            if task.state is running:
                task.transition(TaskState.FAILED, ErrorCode.INTERNAL)
                self._close_with_error(rec, api.ErrorEnvelope(
                    code=ErrorCode.INTERNAL.value, message=f"internal error: {type(e).__name__}",
                    pool_id=pool.id,
                ))  # fmt: skip
        finally:
            if task.state is running:  # the engine ended without an End event
                task.transition(TaskState.FAILED, ErrorCode.WORKER_RESET)
                self._close_with_error(rec, api.ErrorEnvelope(
                    code=ErrorCode.WORKER_RESET.value, retriable=True, engine=replica.engine,
                    pool_id=pool.id, message="the engine closed the stream without finishing",
                ))  # fmt: skip
            pool.running.pop(task.id, None)
            pool.manager.release(lease)
            m.child(m.slots_busy, pool.id, replica.id).set(replica.busy)
            if not pool.pumping:
                self.pump(pool)
            self._check_idle()

    def _engine_failed(self, rec: TaskRecord, replica: Replica, e: AdapterError) -> None:
        pool, task = rec.pool, rec.task
        retry = (
            rec.tokens_out == 0
            and e.code in (ErrorCode.WORKER_RESET, ErrorCode.REPLICA_EXHAUSTED)
            and task.retries < pool.config.max_retries
            and not pool.draining
        )
        log.warning(
            "engine error",
            task_id=task.id,
            pool_id=pool.id,
            replica_id=replica.id,
            engine=replica.engine,
            code=e.code.value,
            error=e.message,
            retry=retry,
            correlation_id=rec.correlation_id,
        )
        if e.code is ErrorCode.WORKER_RESET:
            pool.manager.suspect(replica, e.message)
        if retry:
            # Nothing reached the client yet: run it elsewhere, ahead of never-run work.
            pool.queue.requeue_front(task)
            rec.replica_id = None
            return
        task.transition(TaskState.FAILED, e.code)
        self._close_with_error(rec, api.ErrorEnvelope(
            code=e.code.value, message=e.message, retriable=e.retriable, engine=e.engine,
            pool_id=pool.id,
        ))  # fmt: skip

    # -- terminal reporting --------------------------------------------------------

    def _close_with_end(self, rec: TaskRecord, finish_reason: str) -> None:
        now = self.now_ms()
        rec.finish_reason = finish_reason
        started = rec.first_token_at or rec.started_at or now
        decode_ms = round(now - started)
        rec.stream.emit("end", api.EndEvent(
            tokens_out=rec.tokens_out, decode_ms=decode_ms,
            finish_reason=finish_reason,  # type: ignore[arg-type]
        ).model_dump_json())  # fmt: skip
        pool = rec.pool
        m = self.metrics
        engine = rec.engine or pool.config.engine
        m.child(m.tokens_out, pool.id, engine).inc(rec.tokens_out)
        if rec.tokens_in:
            m.child(m.tokens_in, pool.id, engine).inc(rec.tokens_in)
        prio = rec.task.priority.value
        if rec.first_token_at is not None:
            m.child(m.latency_first_token, pool.id, prio).observe(
                rec.first_token_at - rec.admitted_at
            )
            m.child(m.latency_decode, pool.id, prio).observe(now - rec.first_token_at)
        if finish_reason == "canceled":
            m.child(m.tasks_canceled, pool.id, "client").inc()
        elif rec.started_at is not None:
            pool.estimator.observe(now - rec.started_at, rec.tokens_out)
        self._retire(rec)

    def _close_with_error(self, rec: TaskRecord, error: api.ErrorEnvelope) -> None:
        rec.error = error
        rec.stream.emit("error", error.model_dump_json(exclude_none=True))
        self._retire(rec)

    def _retire(self, rec: TaskRecord) -> None:
        # one line per task (never per token), with everything needed to follow it
        log.info(
            "task ended",
            task_id=rec.task.id,
            state=rec.task.state.value,
            pool_id=rec.pool.id,
            replica_id=rec.replica_id,
            engine=rec.engine,
            tokens_out=rec.tokens_out,
            finish_reason=rec.finish_reason,
            error=rec.error.code if rec.error else None,
            session_id=rec.task.session_id,
            correlation_id=rec.correlation_id,
        )
        rec.stream.close()
        rec.request = None
        self.metrics.child(self.metrics.tasks_finished, rec.pool.id, rec.task.state.value).inc()
        self._finished[rec.task.id] = self.now_ms()
        retention = self.config.server.retention_s
        self._loop.call_later(retention, self._forget, rec.task.id)
        while len(self._finished) > self.config.server.max_retained_tasks:
            oldest, _ = self._finished.popitem(last=False)
            self.tasks.pop(oldest, None)
        self._check_idle()

    def _forget(self, task_id: str) -> None:
        if self._finished.pop(task_id, None) is not None:
            self.tasks.pop(task_id, None)

    def _check_idle(self) -> None:
        if not self._idle.is_set() and self.active_count() == 0:
            self._idle.set()

    # -- client operations ---------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord:
        rec = self.tasks.get(task_id)
        if rec is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no task {task_id!r} (unknown or expired)")
        return rec

    def status(self, task_id: str) -> api.TaskStatus:
        rec = self.get(task_id)
        task = rec.task
        done = task.state.terminal
        return api.TaskStatus(
            task_id=task.id,
            state=task.state,
            model=rec.pool.config.model,
            pool_id=rec.pool.id,
            priority=task.priority,
            queue_position=rec.pool.queue.position(task.id),
            replica_id=rec.replica_id,
            tokens_out=rec.tokens_out,
            finish_reason=rec.finish_reason,
            seed=rec.seed,
            output="".join(rec.output) if done else None,
            output_truncated=rec.output_truncated,
            error=rec.error,
        )

    def cancel(self, task_id: str) -> None:
        """Cancel a task; idempotent. No token event follows once this returns."""
        rec = self.get(task_id)
        task = rec.task
        if task.state is TaskState.QUEUED:
            rec.pool.queue.cancel(task.id)
            self._close_with_end(rec, "canceled")
            self._update_depth(rec.pool)
            log.info("canceled queued task", task_id=task.id, pool_id=rec.pool.id)
        elif task.state is TaskState.RUNNING:
            task.transition(TaskState.CANCELED, ErrorCode.CANCELED)
            self._close_with_end(rec, "canceled")
            if rec.runner is not None:
                rec.runner.cancel()  # closes the engine request; the slot frees in its finally
            log.info(
                "canceled running task",
                task_id=task.id,
                pool_id=rec.pool.id,
                replica_id=rec.replica_id,
            )

    # -- sessions ------------------------------------------------------------------

    def session(self, session_id: str) -> api.SessionInfo:
        now = self.now_ms()
        info = self.sessions.get(session_id, now)
        if info is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no session {session_id!r}")
        ttl = max(0, round(self.sessions.ttl_ms - (now - info.last_used_ms)))
        return api.SessionInfo(
            session_id=session_id,
            ttl_ms=ttl,
            turns=info.turns,
            replica_id=info.replica_id,
            kv_warmth=round(self.sessions.kv_warmth(info, now), 3),
        )

    def delete_session(self, session_id: str) -> None:
        self.sessions.delete(session_id)

    # -- control plane -------------------------------------------------------------

    def pool(self, pool_id: str) -> PoolRuntime:
        pool = self.pools.get(pool_id)
        if pool is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no pool {pool_id!r}")
        return pool

    def pool_info(self, pool: PoolRuntime) -> api.PoolInfo:
        reps = [
            api.ReplicaInfo(
                replica_id=r.id, state=r.state.value,  # type: ignore[arg-type]
                slots_total=r.slots_total, slots_free=max(r.slots_total - r.busy, 0),
                engine=r.engine, engine_version=r.engine_version, model_digest=r.model_digest,
                deterministic=r.deterministic, restarts=r.restarts, last_error=r.last_error,
                endpoint=r.endpoint,
            )
            for r in pool.manager.replicas
        ]  # fmt: skip
        return api.PoolInfo(
            pool_id=pool.id, engine=pool.config.engine, model=pool.config.model,
            ready=pool.manager.ready, draining=pool.draining,
            queue_depth={p.value: pool.queue.depth(p) for p in PRIORITIES},
            queue_capacity=pool.queue.capacity, policy=pool.config.queue.policy,
            ctx_max=pool.ctx_max(), replicas=reps, last_error=pool.manager.last_error,
        )  # fmt: skip

    def drain(self, pool: PoolRuntime, deadline_ms: int) -> None:
        """Stop new leases now; at the deadline, end whatever still runs or waits."""
        if pool.draining:
            return
        pool.manager.drain()
        log.info("draining pool", pool_id=pool.id, deadline_ms=deadline_ms)
        pool.drain_timer = self._loop.call_later(
            deadline_ms / 1000.0, self._abort_pool, pool, f"pool {pool.id!r} was drained"
        )

    async def reload(self, pool: PoolRuntime, model: str) -> None:
        try:
            await pool.manager.reload(model)
        except ReloadFailed:
            return  # last_error says why; the old replicas keep serving
        self.pump(pool)
