"""The dispatch question: slots are free in a pool — which queued task goes where?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator_core.model import PlacementMode, Task
from orchestrator_core.placement import (
    NoFit,
    NoFitReason,
    PlacementRequest,
    ReplicaSnapshot,
    place,
)
from orchestrator_core.prefix import CacheHit, PrefixIndex
from orchestrator_core.queue import ANY_LANE, STRICT_LANE, PoolQueue, pin_lane
from orchestrator_core.sessions import SessionTable


@dataclass(slots=True)
class DispatchStep:
    """One answer: at most one (task, replica) pair, plus tasks that left the queue on the
    way and must be reported by the caller."""

    task: Task | None = None
    replica_id: str | None = None
    #: The slot to lease on `replica_id` (None: any free one).
    slot: int | None = None
    #: Why placement chose `replica_id` (`Placed.reason`).
    reason: str = ""
    #: Estimated prompt blocks the replica already held for the task (prefix-aware pools).
    cached_blocks: int = 0
    #: Nothing dispatched: the next task waits for a warm replica until then (ms).
    hold_until_ms: float | None = None
    expired: list[Task] = field(default_factory=list)
    #: A task taken from the queue that no replica can serve (caller fails it).
    unplaceable: tuple[Task, NoFitReason] | None = None


@dataclass(frozen=True, slots=True)
class PrefixRouting:
    """Prefix-aware placement for one pool (see `PrefixIndex`, `PlacementRequest`)."""

    index: PrefixIndex
    #: The engine's slots keep their own KV besides the replica's shared cache, and a
    #: request can name its slot (llama.cpp `id_slot`): tasks are placed on a slot.
    per_slot: bool
    load_guard: int = 1
    #: How long a task may wait for a busy replica holding a longer prefix (0: never).
    max_wait_ms: float = 0.0


def free_lanes(replicas: Sequence[ReplicaSnapshot]) -> list[str]:
    """The queue lanes that a free slot among `replicas` can serve."""
    lanes: list[str] = []
    strict = False
    for r in replicas:
        if r.serving and r.slots_free > 0:
            lanes.append(pin_lane(r.id))
            strict = strict or r.deterministic
    if lanes:
        lanes.append(ANY_LANE)
        if strict:
            lanes.append(STRICT_LANE)
    return lanes


def next_dispatch(
    queue: PoolQueue,
    replicas: Sequence[ReplicaSnapshot],
    sessions: SessionTable,
    now_ms: float,
    prefix: PrefixRouting | None = None,
    prefill_ms_per_block: float | None = None,
) -> DispatchStep:
    """Take the next task that can run on a free slot and place it.

    O(log n) in the queue depth plus O(R) in the pool's replicas. The caller leases the
    slot on `replica_id` before asking again with fresh snapshots. With `prefix`, a task
    may instead be held (`hold_until_ms`) for a busy replica that holds a longer prefix of
    its prompt, when the prefill that saves (`prefill_ms_per_block` per block, the
    estimator's) beats the longest wait, `prefix.max_wait_ms`; never longer than that.
    """
    lanes = free_lanes(replicas)
    if not lanes:
        return DispatchStep(expired=queue.expire_due(now_ms))
    if prefix is not None and prefix.max_wait_ms > 0 and prefill_ms_per_block:
        expired = queue.expire_due(now_ms)
        head = queue.peek_next(lanes)
        if head is not None:
            hold = _hold_until(head, replicas, prefix, prefill_ms_per_block, now_ms)
            if hold is not None:
                return DispatchStep(expired=expired, hold_until_ms=hold)
    task, expired = queue.take_next(lanes, now_ms)
    step = DispatchStep(expired=expired)
    if task is None:
        return step
    hits = _hits(task, replicas, prefix) if prefix is not None and task.prefix else {}
    request = PlacementRequest(
        task.determinism,
        task.placement,
        sessions.warm_replica(task.session_id, now_ms),
        task.failed_on,
        {rid: hit.blocks for rid, hit in hits.items()},
        prefix.load_guard if prefix is not None else None,
        {rid: hit.used for rid, hit in hits.items()},
    )
    result = place(request, replicas)
    if isinstance(result, NoFit):
        step.unplaceable = (task, result.reason)
        return step
    step.task, step.replica_id, step.reason = task, result.replica_id, result.reason
    if prefix is not None:
        hit = hits.get(result.replica_id, CacheHit(0))
        cached, slot = hit.blocks, hit.slot
        if prefix.per_slot:
            if slot is None:  # no prefix considered: the least recently used free slot
                chosen = next(r for r in replicas if r.id == result.replica_id)
                slot = prefix.index.hit(result.replica_id, (), chosen.free_slot_ids()).slot
            step.slot = slot
        step.cached_blocks = cached
        prefix.index.record(result.replica_id, task.prefix, step.slot)
    return step


def _hits(
    task: Task, replicas: Sequence[ReplicaSnapshot], prefix: PrefixRouting
) -> dict[str, CacheHit]:
    """The best hit on a free slot of each replica that has one."""
    return {
        r.id: prefix.index.hit(r.id, task.prefix, r.free_slot_ids() if prefix.per_slot else ())
        for r in replicas
        if r.serving and r.slots_free > 0
    }


def _hold_until(
    task: Task,
    replicas: Sequence[ReplicaSnapshot],
    prefix: PrefixRouting,
    prefill_ms_per_block: float,
    now_ms: float,
) -> float | None:
    """Until when `task` should wait for a warmer replica, or None to place it now."""
    if not task.prefix or task.placement.mode is PlacementMode.PIN or task.failed_on:
        return None
    if task.hold_until_ms is not None and now_ms >= task.hold_until_ms:
        return None  # it waited as long as it may
    free_best = max((hit.blocks for hit in _hits(task, replicas, prefix).values()), default=0)
    # what a replica holds whichever of its slots frees (no slots named: the replica's own)
    warm_best = max(
        (prefix.index.hit(r.id, task.prefix).blocks for r in replicas if r.serving), default=0
    )
    if (warm_best - free_best) * prefill_ms_per_block <= prefix.max_wait_ms:
        return None
    if task.hold_until_ms is None:
        until = now_ms + prefix.max_wait_ms
        task.hold_until_ms = until if task.deadline_ms is None else min(until, task.deadline_ms)
    return task.hold_until_ms
