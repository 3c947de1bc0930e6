"""A replica's runtime state and its slot leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator_core.placement import ReplicaSnapshot
from worker_adapters.base import Capabilities, WorkerAdapter


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNREADY = "unready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"  # gave up restarting; see last_error


class ReplicaEvent(StrEnum):
    """What changed about a replica, as its pool manager tells its owner."""

    READY = "ready"  # serving (first start, restart, or a suspicion that proved false)
    DOWN = "down"  # stopped serving; its supervisor restarts it
    FAILED = "failed"  # down for good after `max_restarts`
    RESTART = "restart"  # a restart is about to begin
    DRAINING = "draining"  # takes no new leases (drain, or retired by a reload)
    REMOVED = "removed"  # retired and stopped
    STATS = "stats"  # the engine's own load was read


@dataclass(slots=True, eq=False)
class Replica:
    id: str
    engine: str
    deterministic: bool
    slots_total: int
    state: ReplicaState = ReplicaState.STARTING
    adapter: WorkerAdapter | None = None
    engine_version: str = ""
    model_digest: str = ""
    ctx_per_slot: int | None = None
    restarts: int = 0
    last_error: str | None = None
    endpoint: str | None = None
    kv_free_fraction: float | None = None
    #: Requests the engine itself reports processing (its view; `busy` is our leases).
    engine_busy: int | None = None
    #: The engine process, when pool_managerd spawned it.
    pid: int | None = None
    #: The slots leased now, by index.
    leased_slots: set[int] = field(default_factory=set)
    #: The pool-managerd agent that runs it, and that agent's host; None when local.
    agent_id: str | None = None
    host: str | None = None

    @property
    def busy(self) -> int:
        """Slots leased now."""
        return len(self.leased_slots)

    def mark_ready(self, adapter: WorkerAdapter, caps: Capabilities) -> None:
        self.adapter = adapter
        self.engine_version = caps.engine_version
        self.model_digest = caps.model_digest
        self.ctx_per_slot = caps.ctx_per_slot
        # Never lease more than both we configured and the engine reports; 0 configured
        # (attached engines) means as many as the engine reports.
        if self.slots_total == 0:
            self.slots_total = caps.slots
        elif caps.slots:
            self.slots_total = min(self.slots_total, caps.slots)
        if self.state is not ReplicaState.DRAINING:
            self.state = ReplicaState.READY

    def snapshot(self) -> ReplicaSnapshot:
        return ReplicaSnapshot(
            id=self.id,
            ready=self.state in (ReplicaState.READY, ReplicaState.DRAINING),
            draining=self.state is ReplicaState.DRAINING,
            slots_total=self.slots_total,
            slots_busy=self.busy,
            kv_free_fraction=self.kv_free_fraction,
            engine_version=self.engine_version,
            model_digest=self.model_digest,
            deterministic=self.deterministic,
            busy_slot_ids=frozenset(self.leased_slots),
        )

    @property
    def could_serve(self) -> bool:
        """Ready, or on its way to it (admission may queue work for it)."""
        return self.state in (ReplicaState.READY, ReplicaState.STARTING, ReplicaState.UNREADY)


class Lease:
    """The right to one slot on one replica — slot `slot`, or the lowest free one; released
    exactly once."""

    __slots__ = ("_released", "replica", "slot")

    def __init__(self, replica: Replica, slot: int | None = None) -> None:
        if replica.busy >= replica.slots_total:
            raise RuntimeError(f"replica {replica.id} has no free slot")
        leased = replica.leased_slots
        if slot is None or slot in leased:
            # the lowest free index; past slots_total only while a restart shrank the
            # replica under leases still held (they never reach the engine as `id_slot`)
            slot = next(i for i in range(replica.slots_total + len(leased)) if i not in leased)
        leased.add(slot)
        self.replica = replica
        self.slot = slot
        self._released = False

    def release(self) -> bool:
        """Free the slot; True the first time only."""
        if self._released:
            return False
        self._released = True
        self.replica.leased_slots.discard(self.slot)
        return True
