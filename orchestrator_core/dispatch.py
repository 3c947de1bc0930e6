"""The dispatch question: slots are free in a pool — which queued task goes where?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator_core.model import Task
from orchestrator_core.placement import (
    NoFit,
    NoFitReason,
    PlacementRequest,
    ReplicaSnapshot,
    place,
)
from orchestrator_core.queue import ANY_LANE, STRICT_LANE, PoolQueue, pin_lane
from orchestrator_core.sessions import SessionTable


@dataclass(slots=True)
class DispatchStep:
    """One answer: at most one (task, replica) pair, plus tasks that left the queue on the
    way and must be reported by the caller."""

    task: Task | None = None
    replica_id: str | None = None
    expired: list[Task] = field(default_factory=list)
    #: A task taken from the queue that no replica can serve (caller fails it).
    unplaceable: tuple[Task, NoFitReason] | None = None


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
) -> DispatchStep:
    """Take the next task that can run on a free slot and place it.

    O(log n) in the queue depth plus O(R) in the pool's replicas. The caller leases the
    slot on `replica_id` before asking again with fresh snapshots.
    """
    lanes = free_lanes(replicas)
    if not lanes:
        return DispatchStep(expired=queue.expire_due(now_ms))
    task, expired = queue.take_next(lanes, now_ms)
    step = DispatchStep(expired=expired)
    if task is None:
        return step
    request = PlacementRequest(
        task.determinism,
        task.placement,
        sessions.warm_replica(task.session_id, now_ms),
        task.failed_on,
    )
    result = place(request, replicas)
    if isinstance(result, NoFit):
        step.unplaceable = (task, result.reason)
    else:
        step.task, step.replica_id = task, result.replica_id
    return step
