"""The bounded priority queue of one pool (after TGI's router: one owner of queue state).

Layout: tasks are split into *lanes* by where they may run — `any` replica, `strict`
(deterministic replicas only) or `pin:<replica>` — so a task that cannot use a free slot
never blocks one that can (no head-of-line blocking). Each lane holds one `FairClass` per
priority. Tasks put back after a replica failed before their first token wait in a
per-priority retry line that dispatches ahead of everything else of that priority.

Dispatch order: every `interactive` task before any `batch` task; within a priority,
retries first, then the lanes' heads by arrival, each lane fair across tenants.

Complexity: offer, take, remove and expire are O(log n) and independent of the number of
tenants; `position` is O(L·log n) for L non-empty lanes — no operation scans the queue or
the tenants.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum

from orchestrator_core.errors import ErrorCode
from orchestrator_core.fair import FairClass
from orchestrator_core.model import (
    PRIORITIES,
    Determinism,
    PlacementMode,
    Priority,
    Task,
    TaskState,
)
from orchestrator_core.vtc import TokenFairClass

ANY_LANE = "any"
STRICT_LANE = "strict"


def pin_lane(replica_id: str) -> str:
    return f"pin:{replica_id}"


def lane_of(task: Task) -> str:
    """The lane a task waits in: which free slots it can use."""
    if task.placement.mode is PlacementMode.PIN and task.placement.replica_id:
        return pin_lane(task.placement.replica_id)
    if task.determinism is Determinism.STRICT:
        return STRICT_LANE
    return ANY_LANE


class QueuePolicy(StrEnum):
    REJECT = "reject"
    DROP_LRU = "drop-lru"


@dataclass(frozen=True, slots=True)
class Admitted:
    """The task is queued at `position` (0 = next); `evicted` names a drop-lru victim."""

    position: int
    evicted: Task | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The queue is full; retry after `backoff_ms`."""

    reason: ErrorCode
    backoff_ms: int


OfferResult = Admitted | Rejected


@dataclass(frozen=True, slots=True)
class TokenCosts:
    """Token fairness (`queue.fairness: tokens`): what one prompt and one output token
    charge a tenant's counter (the paper's w_p = 1, w_q = 2 by default)."""

    input: int = 1
    output: int = 2

    def estimate(self, task: Task) -> int:
        """The most a queued task can charge: its prompt and all the output it may make."""
        return self.input * task.prompt_tokens + self.output * task.max_tokens


class _Lane:
    __slots__ = ("classes", "key", "retries")

    def __init__(self, key: str, weights: Mapping[str, int], tokens: TokenCosts | None) -> None:
        self.key = key
        self.classes: dict[Priority, FairClass | TokenFairClass] = {
            p: FairClass(weights) if tokens is None else TokenFairClass(tokens.estimate, weights)
            for p in PRIORITIES
        }
        # Retried tasks, in the order they were put back; dispatched first.
        self.retries: dict[Priority, OrderedDict[str, Task]] = {
            p: OrderedDict() for p in PRIORITIES
        }


class PoolQueue:
    """Bounded, prioritised, tenant-fair queue of one pool.

    The queue owns the queued-side transitions of its tasks: it moves them to RUNNING when
    taken, and to CANCELED, EVICTED or EXPIRED when they leave without running.
    """

    def __init__(
        self,
        capacity: int,
        policy: QueuePolicy = QueuePolicy.REJECT,
        tenant_weights: Mapping[str, int] | None = None,
        token_costs: TokenCosts | None = None,
    ) -> None:
        """`token_costs` set: tenants share by tokens served (`TokenFairClass`), else by
        tasks dispatched (`FairClass`)."""
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.policy = policy
        self._weights = dict(tenant_weights or {})
        self.token_costs = token_costs
        FairClass(self._weights)  # validate weights now, not on the first offer
        self._lanes: dict[str, _Lane] = {}
        self._tasks: dict[str, Task] = {}
        self._depth = {p: 0 for p in PRIORITIES}
        self._seq = itertools.count()
        # Fresh (never-run) tasks per priority in arrival order, for drop-lru's victim
        # choice: insertion order is arrival order, so the oldest is first, in O(1).
        self._lru: dict[Priority, OrderedDict[str, Task]] = {p: OrderedDict() for p in PRIORITIES}
        self._track_lru = policy is QueuePolicy.DROP_LRU
        # (deadline_ms, seq, task_id); entries of tasks that left are skipped lazily.
        self._deadlines: list[tuple[float, int, str]] = []
        self._retrying = 0

    # -- inspection ----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(list(self._tasks.values()))

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def depth(self, priority: Priority | None = None) -> int:
        """Queued tasks, of one priority or of both."""
        if priority is None:
            return len(self._tasks)
        return self._depth[priority]

    def position(self, task_id: str) -> int | None:
        """How many queued tasks dispatch before this one (0 = next), or None."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        priority = task.priority
        ahead = self._depth_ahead(priority)
        own_lane = self._lanes[lane_of(task)]
        lines = [lane.retries[priority] for lane in self._lanes.values()]
        if task.id in own_lane.retries[priority]:
            # take_next serves the retry line whose head arrived first: a merge by arrival
            # of the lines' heads (retry lines are short)
            merged = heapq.merge(*(line.values() for line in lines), key=lambda x: x.seq)
            return ahead + next(i for i, x in enumerate(merged) if x is task)
        ahead += sum(len(line) for line in lines)
        for lane in self._lanes.values():
            if lane is not own_lane:
                ahead += lane.classes[priority].count_before_seq(task.seq)
        return ahead + own_lane.classes[priority].position(task)

    def _depth_ahead(self, priority: Priority) -> int:
        return self._depth[Priority.INTERACTIVE] if priority is Priority.BATCH else 0

    def _position_of_newest(self, task: Task, own_lane: _Lane) -> int:
        # The newest task arrived after everything in the other lanes: all of them count.
        ahead = self._depth_ahead(task.priority)
        if len(self._lanes) > 1:
            for lane in self._lanes.values():
                if lane is not own_lane:
                    ahead += len(lane.retries[task.priority]) + len(lane.classes[task.priority])
        fair = own_lane.classes[task.priority].position_of_last(task.tenant)
        return ahead + len(own_lane.retries[task.priority]) + fair

    def next_deadline_ms(self) -> float | None:
        """The earliest deadline among queued tasks (for the caller's wake-up timer)."""
        heap = self._deadlines
        while heap and heap[0][2] not in self._tasks:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- admission -----------------------------------------------------------------

    def offer(self, task: Task, *, backoff_ms: int = 1000) -> OfferResult:
        """Queue a new task, evicting per policy when full, or reject it.

        `backoff_ms` is the caller's estimate of when room will free up; it is returned in
        a rejection so the client can back off that long.
        """
        if task.state is not TaskState.QUEUED or task.id in self._tasks:
            raise ValueError(f"task {task.id} is not a new queued task")
        victim: Task | None = None
        if len(self._tasks) - self._retrying >= self.capacity:
            victim = self._victim_for(task) if self.policy is QueuePolicy.DROP_LRU else None
            if victim is None:
                return Rejected(ErrorCode.ADMISSION_REJECT, max(backoff_ms, 0))
        task.seq = next(self._seq)
        lane = self._attach(task, retry=False)
        if victim is not None:
            # evicted once the newcomer is in: a tenant whose oldest task makes room for its
            # own newer one stays backlogged and keeps its turn (OC-CORE-1026)
            self._detach(victim)
            victim.transition(TaskState.EVICTED, ErrorCode.QUEUE_FULL_DROP_LRU)
        return Admitted(self._position_of_newest(task, lane), victim)

    def _victim_for(self, task: Task) -> Task | None:
        # The oldest batch task; else, for an interactive offer only, the oldest interactive.
        for priority in (Priority.BATCH, Priority.INTERACTIVE):
            if priority is Priority.INTERACTIVE and task.priority is Priority.BATCH:
                return None
            lru = self._lru[priority]
            if lru:
                return next(iter(lru.values()))
        return None

    def requeue_front(self, task: Task, failed_on: str) -> None:
        """Put a RUNNING task back at the front of its priority (replica `failed_on` failed
        before it produced a token). Accepted work is never dropped for capacity: a retry
        neither counts toward capacity nor can be evicted."""
        task.transition(TaskState.QUEUED)
        task.retries += 1
        task.failed_on = task.failed_on | {failed_on}
        self._attach(task, retry=True)

    def charge(self, task: Task, prompt_tokens: int = 0, output_tokens: int = 0) -> None:
        """Token fairness: count service `task` received to its tenant (a no-op under
        request fairness, or when its lane is gone: a pinned lane keeps no memory)."""
        costs = self.token_costs
        lane = self._lanes.get(lane_of(task))
        if costs is None or lane is None:
            return
        fair = lane.classes[task.priority]
        assert isinstance(fair, TokenFairClass)
        fair.charge(task.tenant, costs.input * prompt_tokens + costs.output * output_tokens)

    # -- leaving the queue ---------------------------------------------------------

    def cancel(self, task_id: str) -> Task | None:
        """Remove a queued task (client cancel). Returns it, or None if not queued."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        self._detach(task)
        task.transition(TaskState.CANCELED, ErrorCode.CANCELED)
        return task

    def expire_due(self, now_ms: float) -> list[Task]:
        """Expire every queued task whose deadline is before `now_ms`."""
        expired: list[Task] = []
        heap = self._deadlines
        while heap and heap[0][0] < now_ms:
            _deadline, _seq, task_id = heapq.heappop(heap)
            task = self._tasks.get(task_id)
            if task is None:
                continue
            self._detach(task)
            task.transition(TaskState.EXPIRED, ErrorCode.DEADLINE_UNMET)
            expired.append(task)
        return expired

    def peek_next(self, lanes: Iterable[str]) -> Task | None:
        """The task `take_next(lanes, ...)` would take (ignoring expiry), left queued."""
        head = self._head([key for key in lanes if key in self._lanes])
        if head is None:
            return None
        lane, priority, from_retry = head
        if from_retry:
            return next(iter(lane.retries[priority].values()))
        return lane.classes[priority].peek()

    def take_next(self, lanes: Iterable[str], now_ms: float) -> tuple[Task | None, list[Task]]:
        """Dispatch: take the next task that may use a slot in one of `lanes`.

        Expires overdue tasks first (they are returned so the caller can report them); the
        taken task is RUNNING. Returns `(None, expired)` when no eligible task waits.
        """
        expired = self.expire_due(now_ms) if self._deadlines else []
        head = self._head([key for key in lanes if key in self._lanes])
        if head is None:
            return None, expired
        lane, priority, from_retry = head
        if from_retry:
            task = lane.retries[priority].popitem(last=False)[1]
        else:
            # pop, not remove: dispatching is what advances the tenants' fair clock
            popped = lane.classes[priority].pop()
            assert popped is not None
            task = popped
            # token fairness charges the prompt as its service begins (a retry is not
            # charged twice)
            self.charge(task, prompt_tokens=task.prompt_tokens)
        self._forget(task, lane, retry=from_retry)
        task.transition(TaskState.RUNNING)
        return task, expired

    def _head(self, keys: list[str]) -> tuple[_Lane, Priority, bool] | None:
        """Where the next task of `keys`' lanes waits: (lane, priority, in its retry line)."""
        if len(keys) == 1:  # the common case: one lane has work, no comparison needed
            lane = self._lanes[keys[0]]
            for priority in PRIORITIES:
                if lane.retries[priority]:
                    return lane, priority, True
                if len(lane.classes[priority]):
                    return lane, priority, False
            return None
        for priority in PRIORITIES:
            best: tuple[int, int] | None = None
            best_lane: _Lane | None = None
            for key in keys:
                lane = self._lanes[key]
                retries = lane.retries[priority]
                if retries:
                    head = (0, next(iter(retries.values())).seq)
                else:
                    fair = lane.classes[priority]
                    if not len(fair):
                        continue
                    head = (1, fair.peek_seq())
                if best is None or head < best:
                    best, best_lane = head, lane
            if best is not None and best_lane is not None:
                return best_lane, priority, best[0] == 0
        return None

    # -- internals -----------------------------------------------------------------

    def _attach(self, task: Task, *, retry: bool) -> _Lane:
        key = lane_of(task)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, self._weights, self.token_costs)
        if retry:
            lane.retries[task.priority][task.id] = task
            self._retrying += 1
        else:
            lane.classes[task.priority].push(task)
            if self._track_lru:
                self._lru[task.priority][task.id] = task
        self._tasks[task.id] = task
        self._depth[task.priority] += 1
        if task.deadline_ms is not None:
            heapq.heappush(self._deadlines, (task.deadline_ms, task.seq, task.id))
        return lane

    def _detach(self, task: Task) -> None:
        """Take a task out from anywhere in the queue without dispatching it."""
        lane = self._lanes[lane_of(task)]
        retry = lane.retries[task.priority].pop(task.id, None) is not None
        if not retry:
            lane.classes[task.priority].remove(task)
        self._forget(task, lane, retry=retry)

    def _forget(self, task: Task, lane: _Lane, *, retry: bool) -> None:
        del self._tasks[task.id]
        self._depth[task.priority] -= 1
        if retry:
            self._retrying -= 1
        elif self._track_lru:
            del self._lru[task.priority][task.id]
        if (
            lane.key != ANY_LANE
            and not any(lane.classes.values())
            and not any(lane.retries.values())
        ):
            del self._lanes[lane.key]  # pinned lanes come and go with their replicas
