"""Placement as filter → score → pick (after the Kubernetes scheduling framework).

Input is immutable replica snapshots; output is one replica, or the reason none fits.
Same input, same answer: ties are broken by replica id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from orchestrator_core.model import AUTO, Determinism, Placement, PlacementMode


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """What placement may know about one replica at one instant."""

    id: str
    ready: bool
    draining: bool = False
    slots_total: int = 1
    slots_busy: int = 0
    kv_free_fraction: float | None = None
    engine_version: str = ""
    model_digest: str = ""
    deterministic: bool = False

    @property
    def slots_free(self) -> int:
        return max(self.slots_total - self.slots_busy, 0)

    @property
    def serving(self) -> bool:
        """Ready and accepting new leases."""
        return self.ready and not self.draining


class NoFitReason(StrEnum):
    NO_READY_REPLICA = "no_ready_replica"
    ALL_SLOTS_BUSY = "all_slots_busy"
    NO_DETERMINISTIC_REPLICA = "no_deterministic_replica"
    PINNED_REPLICA_UNAVAILABLE = "pinned_replica_unavailable"


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """The task-side inputs of placement."""

    determinism: Determinism = Determinism.BEST_EFFORT
    placement: Placement = AUTO
    #: The replica that served this task's session last, while its KV cache is warm.
    warm_replica: str | None = None
    #: Replicas this task already failed on before its first token: it runs "elsewhere"
    #: whenever another replica fits, there only when none does.
    failed_on: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Placed:
    replica_id: str


@dataclass(frozen=True, slots=True)
class NoFit:
    reason: NoFitReason


PlacementResult = Placed | NoFit


def _eligible(req: PlacementRequest, r: ReplicaSnapshot) -> bool:
    if not r.serving or r.slots_free == 0:
        return False
    if req.determinism is Determinism.STRICT and not r.deterministic:
        return False
    pin = req.placement
    return not (pin.mode is PlacementMode.PIN and pin.replica_id != r.id)


def _score(req: PlacementRequest, r: ReplicaSnapshot) -> tuple[int, int, int, float, int, str]:
    # Sorted ascending: anywhere the task has not failed before first, then an explicit
    # `prefer`, session affinity (warm KV), most free KV (unknown counts as none), fewest
    # busy slots, id.
    failed = r.id in req.failed_on
    preferred = req.placement.mode is PlacementMode.PREFER and req.placement.replica_id == r.id
    warm = req.warm_replica == r.id
    kv_free = r.kv_free_fraction if r.kv_free_fraction is not None else 0.0
    return (int(failed), 0 if preferred else 1, 0 if warm else 1, -kv_free, r.slots_busy, r.id)


def _why_not(req: PlacementRequest, replicas: Sequence[ReplicaSnapshot]) -> NoFitReason:
    if req.placement.mode is PlacementMode.PIN:
        return NoFitReason.PINNED_REPLICA_UNAVAILABLE
    serving = [r for r in replicas if r.serving]
    if not serving:
        return NoFitReason.NO_READY_REPLICA
    if req.determinism is Determinism.STRICT and not any(r.deterministic for r in serving):
        return NoFitReason.NO_DETERMINISTIC_REPLICA
    return NoFitReason.ALL_SLOTS_BUSY


def place(req: PlacementRequest, replicas: Sequence[ReplicaSnapshot]) -> PlacementResult:
    """Pick the best replica with a free slot for `req`, or say why there is none."""
    candidates = [r for r in replicas if _eligible(req, r)]
    if not candidates:
        return NoFit(_why_not(req, replicas))
    return Placed(min(candidates, key=lambda r: _score(req, r)).id)


def could_ever_serve(req: PlacementRequest, replicas: Sequence[ReplicaSnapshot]) -> bool:
    """Whether some replica could take `req` once it has a free slot (admission check).

    Readiness is not required: a replica that is starting or restarting will become Ready.
    """

    def fits(r: ReplicaSnapshot) -> bool:
        if r.draining:
            return False
        if req.determinism is Determinism.STRICT and not r.deterministic:
            return False
        return not (req.placement.mode is PlacementMode.PIN and req.placement.replica_id != r.id)

    return any(fits(r) for r in replicas)
