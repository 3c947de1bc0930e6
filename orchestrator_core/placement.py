"""Placement as filter → score → pick (after the Kubernetes scheduling framework).

Input is immutable replica snapshots; output is one replica, or the reason none fits.
Same input, same answer: ties are broken by replica id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    #: Which slots are leased (slot leases name a slot: llama.cpp takes `id_slot`).
    busy_slot_ids: frozenset[int] = frozenset()

    @property
    def slots_free(self) -> int:
        return max(self.slots_total - self.slots_busy, 0)

    def free_slot_ids(self) -> list[int]:
        return [i for i in range(self.slots_total) if i not in self.busy_slot_ids]

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
    #: Prefix-aware placement: the prompt blocks each replica probably holds on a free slot
    #: (missing: none), and the load guard — a replica counts its cached prefix only while
    #: it has at most `load_guard` more busy slots than the least busy candidate, so one hot
    #: prefix cannot pile onto one replica. None: placement ignores prefixes.
    cached: Mapping[str, int] = field(default_factory=dict)
    load_guard: int | None = None
    #: When what each replica's chosen slot holds was last used (0: never). Among replicas
    #: equally loaded, the least recently used content is overwritten first, so a miss does
    #: not evict a hot prefix.
    recency: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placed:
    replica_id: str
    #: Why this replica: `prefer`, `pin`, `session-affinity`, `prefix` or `least-loaded`.
    reason: str = field(default="least-loaded", compare=False)


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


Score = tuple[int, int, int, int, float, int, int, str]


def _score(req: PlacementRequest, r: ReplicaSnapshot, prefix_busy_max: int) -> Score:
    # Sorted ascending: anywhere the task has not failed before first, then an explicit
    # `prefer`, session affinity (warm KV), the longest cached prompt prefix among replicas
    # within the load guard, most free KV (unknown counts as none), fewest busy slots, the
    # least recently used cache content, id.
    failed = r.id in req.failed_on
    preferred = req.placement.mode is PlacementMode.PREFER and req.placement.replica_id == r.id
    warm = req.warm_replica == r.id
    cached = req.cached.get(r.id, 0) if r.slots_busy <= prefix_busy_max else 0
    kv_free = r.kv_free_fraction if r.kv_free_fraction is not None else 0.0
    return (
        int(failed), 0 if preferred else 1, 0 if warm else 1, -cached, -kv_free, r.slots_busy,
        req.recency.get(r.id, 0), r.id,
    )  # fmt: skip


def _reason(req: PlacementRequest, score: Score) -> str:
    if req.placement.mode is PlacementMode.PIN:
        return "pin"
    if score[1] == 0:
        return "prefer"
    if score[2] == 0:
        return "session-affinity"
    if score[3] < 0:
        return "prefix"
    return "least-loaded"


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
    busy_max = -1  # no replica qualifies for its prefix
    if req.load_guard is not None and req.cached:
        busy_max = min(r.slots_busy for r in candidates) + req.load_guard
    best = min((_score(req, r, busy_max), r) for r in candidates)
    return Placed(best[1].id, _reason(req, best[0]))


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
