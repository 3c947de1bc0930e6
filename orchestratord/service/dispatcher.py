"""One pool as the daemon runs it: `PoolDispatcher`, the single owner of the pool's queue,
its deadline and drain timers, its slot leases and its replicas' events.

Dispatch is a synchronous `pump`, called exactly when something changed — a task arrived, a
slot was released, a replica became Ready, a deadline timer fired — never by polling. It
asks the core which queued task goes to which free slot, takes the slot lease, and starts a
runner. Reserve and unreserve live here together (after the Kubernetes scheduler): the
lease is released, and the pool pumped again, in the runner task's done-callback, which
runs however the runner ended — even when it was cancelled before its first step.

Every path that ends a task goes through `TaskBook.finish` (idempotent).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import structlog

from orchestrator_core.admission import PoolView
from orchestrator_core.dispatch import DispatchStep, next_dispatch
from orchestrator_core.errors import ErrorCode
from orchestrator_core.estimator import ServiceEstimator
from orchestrator_core.model import Priority, TaskState
from orchestrator_core.queue import Admitted, PoolQueue
from orchestrator_core.sessions import SessionTable
from orchestratord.chat_template import ChatTemplate
from orchestratord.config import PoolConfig
from orchestratord.engines import ENGINES
from orchestratord.service.placement import PoolPlacement, token_costs
from orchestratord.service.records import TaskRecord
from orchestratord.service.refusal import Refusal
from orchestratord.service.replicas import RemoteReplicas, replica_set
from orchestratord.service.runner import RunLimits, run_task
from orchestratord.service.tasks import TaskBook
from orchestratord.telemetry import Metrics, tracing
from pool_managerd.replica import Lease, Replica, ReplicaEvent, ReplicaState
from pool_managerd.replica_set import ReloadFailed
from worker_adapters.base import AdapterError

log = structlog.get_logger("orchestratord")

#: Engine failures that say nothing about the task itself: it may run on another replica
#: if no token reached the client yet.
_RETRY_ELSEWHERE = frozenset({ErrorCode.WORKER_RESET, ErrorCode.REPLICA_EXHAUSTED})


class PoolDispatcher:
    def __init__(
        self,
        config: PoolConfig,
        remote: RemoteReplicas | None = None,
        *,
        book: TaskBook,
        sessions: SessionTable,
        metrics: Metrics,
        limits: RunLimits,
        now_ms: Callable[[], float],
        may_dispatch: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.queue = PoolQueue(
            config.queue.capacity, config.queue.policy, config.queue.tenant_weights,
            token_costs(config),
        )  # fmt: skip
        self.estimator = ServiceEstimator()
        self.placement = PoolPlacement(config, self.queue, self.estimator, metrics)
        self.manager = replica_set(config, self._on_replica_event, remote)
        metrics.add_pool(self.id, self.queue, self.estimated_wait_ms)
        #: Tasks holding a slot lease, by id.
        self.running: dict[str, TaskRecord] = {}
        self._book = book
        self._sessions = sessions
        self._metrics = metrics
        self._limits = limits
        self._now_ms = now_ms
        self._may_dispatch = may_dispatch
        self._loop = asyncio.get_running_loop()
        self._pumping = False
        self._deadline_timer: asyncio.TimerHandle | None = None
        #: A task waits for a warm replica until then (ms), at the latest.
        self._hold_until: float | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        #: The latest reload (`start_reload`): what the engines load, and its task, whose
        #: result says why it failed (None once switched over).
        self.reload_model: str | None = None
        self.reload_task: asyncio.Task[str | None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        #: Renders conversations for this pool (else the engine's own chat route does).
        self.chat_template = ChatTemplate(config.chat_template) if config.chat_template else None
        self.engine_renders_chat = ENGINES[config.engine].chat
        managed = config.replicas.managed
        self._configured_ctx = (
            managed.ctx // managed.slots if managed is not None and managed.ctx else None
        )

    # -- what admission and the views read -------------------------------------------

    @property
    def draining(self) -> bool:
        return self.manager.draining

    def ctx_max(self) -> int | None:
        """Context tokens one sequence may use: the engines' own figure once known."""
        known = [r.ctx_per_slot for r in self.manager.replicas if r.ctx_per_slot]
        return min(known) if known else self._configured_ctx

    def view(self) -> PoolView:
        serving = [r.snapshot() for r in self.manager.replicas if r.could_serve]
        return PoolView(self.id, self.config.model, self.ctx_max(), self.draining, serving)

    def slot_counts(self) -> tuple[int, int]:
        """(total, busy) slots over Ready replicas; total is at least 1 for estimates."""
        live = [r for r in self.manager.replicas if r.state is ReplicaState.READY]
        return max(sum(r.slots_total for r in live), 1), sum(r.busy for r in live)

    def active(self) -> int:
        """Tasks queued or running."""
        return len(self.queue) + len(self.running)

    # -- admission ---------------------------------------------------------------------

    def admit(self, rec: TaskRecord, *, recovered: bool = False) -> None:
        """Queue an accepted task (the queue may evict a drop-lru victim for it), record its
        position and predicted start, and pump; raise Refusal when the queue is full. A task
        `recovered` from the store after a restart is journaled already."""
        total, busy = self.slot_counts()
        result = self.queue.offer(rec.task, backoff_ms=self.estimator.backoff_ms(total))
        policy = self.config.queue.policy
        if not isinstance(result, Admitted):
            self._metrics.on_rejected(self.id, "queue_full", policy)
            raise Refusal(
                ErrorCode.ADMISSION_REJECT,
                f"queue of pool {self.id!r} is full ({self.queue.capacity} tasks)",
                pool_id=self.id, retry_after_ms=result.backoff_ms, policy_label=policy.value,
            )  # fmt: skip
        rec.queue_position = result.position
        rec.predicted_start_ms = self.estimator.predicted_start_ms(result.position, total, busy)
        self._book.add(rec, recovered=recovered)
        self._idle.clear()
        self._metrics.on_admitted(self.id, rec.task.priority)
        if result.evicted is not None:
            self._finish_queued(
                result.evicted.id, TaskState.EVICTED, ErrorCode.QUEUE_FULL_DROP_LRU,
                f"evicted from the full queue of pool {self.id!r} by a newer task",
            )  # fmt: skip
        self.pump()

    def estimated_wait_ms(self, priority: Priority) -> int:
        """How long a task of `priority` admitted now would wait to start (what admission
        predicts; 0 while the pool has no service-time estimate yet)."""
        total, busy = self.slot_counts()
        return self.estimator.predicted_start_ms(self.ahead_of(priority), total, busy)

    def ahead_of(self, priority: Priority) -> int:
        """How many queued tasks dispatch before a new task of `priority`."""
        if priority is Priority.INTERACTIVE:
            return self.queue.depth(Priority.INTERACTIVE)
        return len(self.queue)

    # -- dispatch ----------------------------------------------------------------------

    def pump(self) -> None:
        """Hand free slots to queued tasks until one of them runs out."""
        if self._pumping:  # a callback inside the pump asked again: the loop covers it
            return
        if self._may_dispatch is not None and not self._may_dispatch():
            return  # a leader whose lease is in doubt starts nothing (`leadership`)
        self._pumping = True
        try:
            now = self._now_ms()
            self._hold_until = None
            self.placement.streamed(self.running.values())
            prefix, per_block = self.placement.prefix, self.placement.prefill_ms_per_block()
            while self.queue:  # (an empty one has nothing to start, expire or hold)
                step = next_dispatch(
                    self.queue, self.manager.snapshots(), self._sessions, now, prefix, per_block
                )
                for expired in step.expired:
                    self._finish_queued(
                        expired.id, TaskState.EXPIRED, ErrorCode.DEADLINE_UNMET,
                        "the deadline passed before a slot was free",
                    )  # fmt: skip
                if step.unplaceable is not None:
                    task, reason = step.unplaceable
                    self._metrics.on_placement(self.id, reason.value)
                    self._finish_queued(
                        task.id, TaskState.FAILED, ErrorCode.POOL_UNAVAILABLE,
                        f"no replica can serve this task: {reason.value}",
                    )  # fmt: skip
                    continue
                if step.task is None:  # nothing to run now, or it waits for a warm replica
                    self._hold_until = step.hold_until_ms
                    break
                assert step.replica_id is not None
                rec = self._book.get(step.task.id)
                assert rec is not None
                self._start(rec, step, self.manager.lease(step.replica_id, step.slot), now)
            self._arm_timer()
        finally:
            self._pumping = False
        self._check_idle()

    def _start(self, rec: TaskRecord, step: DispatchStep, lease: Lease, now: float) -> None:
        replica = lease.replica
        self.placement.started(rec, step, lease)
        waited = now - rec.admitted_at
        self._metrics.on_started(self.id, replica, rec.task.priority, waited)
        if rec.spans is not None and rec.request is not None:  # traced (tracing is on)
            traceparent = tracing.started(
                rec.spans, replica.id, replica.engine, rec.task.retries, step.reason
            )
            rec.request = replace(rec.request, traceparent=traceparent)
        if rec.task.session_id:
            self._sessions.record_turn(rec.task.session_id, replica.id, now)
        self.running[rec.task.id] = rec
        runner = asyncio.create_task(run_task(rec, replica, self._limits, self._book, self._now_ms))
        rec.runner = runner
        runner.add_done_callback(partial(self._runner_done, rec, lease))

    def _runner_done(
        self, rec: TaskRecord, lease: Lease, runner: asyncio.Task[AdapterError | None]
    ) -> None:
        """Unreserve: free the slot however the runner ended, then decide what an engine
        failure means for the task, and pump."""
        self.running.pop(rec.task.id, None)
        rec.runner = None
        self.manager.release(lease)
        self.placement.ended(rec)
        # run_task catches everything but cancellation
        failure = None if runner.cancelled() else runner.result()
        if failure is not None:
            self._engine_failed(rec, lease.replica, failure)
        elif rec.task.state is TaskState.RUNNING:  # cancelled before it could end the task
            self._book.finish(rec, TaskState.CANCELED, ErrorCode.CANCELED)
        if rec.task.state is TaskState.COMPLETED and rec.started_at is not None:
            self.estimator.observe(self._now_ms() - rec.started_at, rec.tokens_out)
        self.pump()

    def _engine_failed(self, rec: TaskRecord, replica: Replica, e: AdapterError) -> None:
        task = rec.task
        if e.code is ErrorCode.WORKER_RESET:
            self.manager.suspect(replica, e.message)
        retry = (
            task.state is TaskState.RUNNING
            and rec.tokens_out == 0
            and e.code in _RETRY_ELSEWHERE
            and task.retries < self.config.max_retries
            and not self.draining
        )
        log.warning(
            "engine error", task_id=task.id, pool_id=self.id, replica_id=replica.id,
            engine=replica.engine, code=e.code.value, error=e.message, detail=e.detail,
            retry=retry, correlation_id=rec.correlation_id, **tracing.log_ids(rec.spans),
        )  # fmt: skip
        if retry:  # nothing reached the client yet: run it elsewhere, ahead of never-run work
            self.queue.requeue_front(task, replica.id)
            rec.replica_id = None
            return
        self._book.finish(
            rec, TaskState.FAILED, e.code, e.message, engine=e.engine, retriable=e.retriable
        )

    def _finish_queued(self, task_id: str, state: TaskState, code: ErrorCode, why: str) -> None:
        """End a task that left the queue without running (the queue moved its state)."""
        rec = self._book.get(task_id)
        assert rec is not None
        label = self.config.queue.policy.value if code is ErrorCode.QUEUE_FULL_DROP_LRU else None
        self._book.finish(rec, state, code, why, policy_label=label)

    def _arm_timer(self) -> None:
        """Pump again at the next queued deadline or the end of a warm-replica wait."""
        due = [t for t in (self.queue.next_deadline_ms(), self._hold_until) if t is not None]
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        if due:
            # +1 ms: expiry is strict (deadline < now), so wake just after it.
            self._deadline_timer = self._loop.call_at((min(due) + 1) / 1000.0, self.pump)

    def _check_idle(self) -> None:
        if not self._idle.is_set() and self.active() == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until nothing is queued or running."""
        await self._idle.wait()

    # -- cancel and abort --------------------------------------------------------------

    def cancel(self, rec: TaskRecord, code: ErrorCode = ErrorCode.CANCELED, why: str = "") -> None:
        """End a queued or running task as canceled (by the client, or withdrawn with
        another `code`); idempotent. No token event follows."""
        task = rec.task
        if task.state is TaskState.QUEUED:
            self.queue.cancel(task.id)
            self._book.finish(rec, TaskState.CANCELED, code, why)
            self._check_idle()
        elif task.state is TaskState.RUNNING:
            self._book.finish(rec, TaskState.CANCELED, code, why)
            if rec.runner is not None:
                rec.runner.cancel()  # closes the engine request; the slot frees when it ends
        log.info(
            "canceled task", task_id=task.id, pool_id=self.id, replica_id=rec.replica_id,
            **tracing.log_ids(rec.spans),
        )  # fmt: skip

    def abort(
        self, why: str, *, running: bool = True, code: ErrorCode = ErrorCode.POOL_UNAVAILABLE
    ) -> None:
        """End every queued (and, with `running`, every running) task with the retriable
        `code`; tasks that already ended are left as they are."""
        for task in list(self.queue):
            self.queue.cancel(task.id)
            self._finish_queued(task.id, TaskState.CANCELED, code, why)
        for rec in list(self.running.values()) if running else ():
            self._book.finish(rec, TaskState.CANCELED, code, why)
            if rec.runner is not None:
                rec.runner.cancel()
        self._check_idle()

    # -- replicas ----------------------------------------------------------------------

    def _on_replica_event(self, replica: Replica, event: ReplicaEvent) -> None:
        self._metrics.on_replica(self.id, replica, event)
        if event in (ReplicaEvent.DOWN, ReplicaEvent.REMOVED, ReplicaEvent.RESTART):
            self._sessions.forget_replica(replica.id)
            self.placement.forget(replica.id)
        elif event is ReplicaEvent.READY:
            self.pump()
        elif event is ReplicaEvent.FAILED and not self.manager.could_serve():
            # Nothing will ever serve the queued work: say so instead of letting it hang.
            self.abort(
                f"no replica of pool {self.id!r} can start: {self.manager.last_error}",
                running=False,
            )

    # -- operator verbs and lifecycle -------------------------------------------------

    def start(self) -> None:
        self.manager.start()

    def drain(self, deadline_ms: int) -> None:
        """Stop new leases now; at the deadline, end whatever still runs or waits."""
        if self.draining:
            return
        self.manager.drain()
        log.info("draining pool", pool_id=self.id, deadline_ms=deadline_ms)
        self._drain_timer = self._loop.call_later(
            deadline_ms / 1000.0, self.abort, f"pool {self.id!r} was drained"
        )

    def resume(self) -> None:
        """Undo a drain: its deadline is called off and the replicas take leases again."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self.draining:
            log.info("resuming pool", pool_id=self.id)
            self.manager.resume()
        self.pump()

    @property
    def reloading(self) -> bool:
        return self.reload_task is not None and not self.reload_task.done()

    def start_reload(self, model: str, *, resume: bool = False) -> None:
        """Swap to `model` (what the engine loads) in the background (`reload_task`); a
        drained pool stays drained unless `resume`."""
        self.reload_model = model
        self.reload_task = asyncio.create_task(self.reload(model, resume=resume))

    async def reload(self, model: str, *, resume: bool = False) -> str | None:
        """Swap to `model` atomically; on failure the old replicas keep serving, and the
        result (also `last_error`) says why."""
        try:
            await self.manager.reload(model)
        except ReloadFailed as e:
            return str(e)
        if resume:
            self.resume()
        self.pump()
        return None

    async def stop(self) -> None:
        """Stop timers and every engine; runners end as their engines go."""
        for timer in (self._deadline_timer, self._drain_timer):
            if timer is not None:
                timer.cancel()
        if self.reload_task is not None:
            self.reload_task.cancel()
        await self.manager.stop()
        runners = [rec.runner for rec in self.running.values() if rec.runner is not None]
        await asyncio.gather(*runners, return_exceptions=True)
