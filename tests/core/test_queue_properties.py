"""Property tests: a RuleBasedStateMachine drives a PoolQueue through offer / take / cancel /
expire / requeue / finish and checks, after every step, against a simple reference model.

OC-CORE-1011, OC-CORE-1020, OC-CORE-1021, OC-CORE-1022, OC-CORE-1023, OC-CORE-1024,
OC-CORE-1025, OC-CORE-1026, OC-CORE-1027, OC-CORE-1028, OC-CORE-1030
"""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Priority, Task, TaskState
from orchestrator_core.queue import ANY_LANE, Admitted, PoolQueue, QueuePolicy, Rejected

TENANTS = ("a", "b", "c")


class QueueMachine(RuleBasedStateMachine):
    @initialize(capacity=st.integers(0, 8), policy=st.sampled_from(list(QueuePolicy)))
    def setup(self, capacity, policy):
        self.q = PoolQueue(capacity, policy)
        self.capacity = capacity
        self.policy = policy
        self.now = 0.0
        self.n = 0
        self.tasks: dict[str, Task] = {}
        self.told: dict[str, TaskState] = {}  # what the caller was told (terminal) or saw
        self.running: list[Task] = []
        self.retried_queued: set[str] = set()
        # fairness bookkeeping per priority (non-retry dispatches only)
        self.clock = 0
        self.last_served: dict[tuple[Priority, str], int] = {}
        self.backlogged_since: dict[tuple[Priority, str], int] = {}

    def queued(self, priority=None, *, fresh_only=False):
        return [
            t
            for t in self.tasks.values()
            if t.state is TaskState.QUEUED
            and (priority is None or t.priority is priority)
            and not (fresh_only and t.id in self.retried_queued)
        ]

    def _mark_backlog(self):
        for p in Priority:
            for tenant in TENANTS:
                key = (p, tenant)
                has = any(t.tenant == tenant for t in self.queued(p, fresh_only=True))
                if has and key not in self.backlogged_since:
                    self.backlogged_since[key] = self.clock
                elif not has:
                    self.backlogged_since.pop(key, None)

    @rule(
        priority=st.sampled_from(list(Priority)),
        tenant=st.sampled_from(TENANTS),
        deadline=st.none() | st.floats(0, 50),
    )
    def offer(self, priority, tenant, deadline):
        self.n += 1
        task = Task(
            f"t{self.n}",
            "p",
            priority=priority,
            tenant=tenant,
            deadline_ms=None if deadline is None else self.now + deadline,
        )
        was_full = len(self.queued(fresh_only=True)) >= self.capacity
        before_batch = sorted(self.queued(Priority.BATCH, fresh_only=True), key=lambda t: t.seq)
        before_inter = sorted(
            self.queued(Priority.INTERACTIVE, fresh_only=True), key=lambda t: t.seq
        )
        result = self.q.offer(task)
        if isinstance(result, Rejected):
            assert was_full, "rejected although not full"
            assert result.reason is ErrorCode.ADMISSION_REJECT
            assert result.backoff_ms >= 0
            if self.policy is QueuePolicy.DROP_LRU:
                assert not before_batch
                assert priority is Priority.BATCH or not before_inter
            return
        assert isinstance(result, Admitted)
        self.tasks[task.id] = task
        if result.evicted is not None:
            assert was_full and self.policy is QueuePolicy.DROP_LRU
            expected = (before_batch or (before_inter if priority is Priority.INTERACTIVE else []))[
                0
            ]
            assert result.evicted is expected
            assert expected.state is TaskState.EVICTED
            assert expected.error is ErrorCode.QUEUE_FULL_DROP_LRU
            self.told[expected.id] = TaskState.EVICTED
            self.retried_queued.discard(expected.id)
        else:
            assert not was_full
        assert result.position == self.q.position(task.id)
        self._mark_backlog()

    @rule(dt=st.floats(0, 20))
    def tick(self, dt):
        self.now += dt

    @rule()
    def take(self):
        queued = self.queued()
        due = {t.id for t in queued if t.deadline_ms is not None and t.deadline_ms < self.now}
        # Expire first: a removal ahead of a task legitimately changes later positions.
        expired = self.q.expire_due(self.now)
        assert {t.id for t in expired} == due
        positions = {t.id: self.q.position(t.id) for t in self.queued()}
        task, late = self.q.take_next([ANY_LANE], self.now)
        assert late == []
        for t in expired:
            assert t.state is TaskState.EXPIRED and t.error is ErrorCode.DEADLINE_UNMET
            self.told[t.id] = TaskState.EXPIRED
            self.retried_queued.discard(t.id)
        task_state = task.state if task else None
        if task is not None:
            task.state = TaskState.QUEUED  # briefly, so the backlog refresh still counts it
        self._mark_backlog()  # expired tasks were never waiting for a turn
        if task is not None:
            task.state = task_state
        live = [t for t in queued if t.id not in due]
        if task is None:
            assert not live
            self._mark_backlog()
            return
        assert task.state is TaskState.RUNNING
        # interactive strictly first
        if task.priority is Priority.BATCH:
            assert not any(t.priority is Priority.INTERACTIVE for t in live)
        # position 0 among the live ones: nothing live was predicted ahead of it
        assert all(positions[t.id] >= positions[task.id] for t in live)
        retry = task.id in self.retried_queued
        if retry:
            self.retried_queued.discard(task.id)
        else:
            # retries of the same priority go first
            assert not any(
                t.id in self.retried_queued and t.priority is task.priority for t in live
            )
            # FIFO within (priority, tenant)
            same = [
                t
                for t in live
                if t.priority is task.priority
                and t.tenant == task.tenant
                and t.id not in self.retried_queued
            ]
            assert task.seq == min(t.seq for t in same)
            # fairness: no other tenant that stayed backlogged since our previous turn was skipped
            key = (task.priority, task.tenant)
            prev = self.last_served.get(key)
            if prev is not None:
                for other in TENANTS:
                    okey = (task.priority, other)
                    if other == task.tenant or okey not in self.backlogged_since:
                        continue
                    # strictly before: the clock ticks on a serve, so a tenant that turns
                    # backlogged right after our previous turn carries that same tick
                    if self.backlogged_since[okey] < prev:
                        assert self.last_served.get(okey, -1) > prev, (
                            f"{task.tenant} served twice while {other} waited"
                        )
            self.clock += 1
            self.last_served[key] = self.clock
        self.running.append(task)
        self._mark_backlog()

    @rule(data=st.data())
    def cancel(self, data):
        queued = self.queued()
        target = data.draw(st.sampled_from([t.id for t in queued] + ["missing"]))
        got = self.q.cancel(target)
        if target == "missing":
            assert got is None
            return
        assert got is self.tasks[target] and got.state is TaskState.CANCELED
        self.told[target] = TaskState.CANCELED
        self.retried_queued.discard(target)
        self._mark_backlog()

    @precondition(lambda self: bool(self.running))
    @rule(
        data=st.data(),
        outcome=st.sampled_from(
            [TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.QUEUED]
        ),
    )
    def finish(self, data, outcome):
        task = data.draw(st.sampled_from(self.running))
        self.running.remove(task)
        if outcome is TaskState.QUEUED:
            self.q.requeue_front(task, "r0")
            self.retried_queued.add(task.id)
        else:
            task.transition(outcome)
            self.told[task.id] = outcome

    @invariant()
    def depth_bounded_and_consistent(self):
        if not hasattr(self, "q"):
            return
        assert self.q.depth() - len(self.retried_queued) <= self.capacity
        queued = self.queued()
        assert self.q.depth() == len(queued)
        for p in Priority:
            assert self.q.depth(p) == len(self.queued(p))
        assert sorted(self.q.position(t.id) for t in queued) == list(range(len(queued)))

    @invariant()
    def no_task_lost_or_duplicated(self):
        if not hasattr(self, "q"):
            return
        for tid, task in self.tasks.items():
            in_queue = tid in self.q
            running = task in self.running
            terminal = task.state.terminal
            assert in_queue + running + terminal == 1, (tid, task.state)
            assert in_queue == (task.state is TaskState.QUEUED)
            if terminal:
                assert self.told[tid] is task.state


QueueMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=50, deadline=None)
TestQueueMachine = QueueMachine.TestCase
