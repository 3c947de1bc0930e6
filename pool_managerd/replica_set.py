"""What the daemon leases slots from: one pool's replicas, however they came to be.

`PoolManager` spawns or attaches to engines on this host and supervises them;
`RemotePool` mirrors the replicas that pool-managerd agents on other hosts report. The
dispatcher sees only this interface: replicas with states, leases, the operator's verbs,
and one `on_change` hook for every change.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from orchestrator_core.placement import ReplicaSnapshot
from pool_managerd.probe import Changes
from pool_managerd.replica import Lease, Replica, ReplicaEvent, ReplicaState

#: on_change(replica, event): called on the event loop for every change, synchronously
ChangeHook = Callable[[Replica, ReplicaEvent], None]


class ReloadFailed(Exception):
    pass


class ReplicaSet(ABC):
    def __init__(self, pool_id: str, model: str, on_change: ChangeHook) -> None:
        self.pool_id = pool_id
        #: What the replicas load (changes with a reload).
        self.model = model
        self.on_change = on_change
        self.replicas: list[Replica] = []
        self.draining = False
        self.last_error: str | None = None
        self._changes = Changes()

    # -- lifecycle and the operator's verbs ------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Begin bringing replicas up (returns at once; readiness follows)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop (or let go of) every replica; returns when they are gone."""

    def drain(self) -> None:
        """Stop new leases on every replica; running leases continue."""
        self.draining = True
        for replica in self.replicas:
            if replica.state is ReplicaState.READY:
                replica.state = ReplicaState.DRAINING
            self._changed(replica, ReplicaEvent.DRAINING)

    def resume(self) -> None:
        """Lease again after a drain (kubectl's uncordon)."""
        self.draining = False
        for replica in self.replicas:
            if replica.state is ReplicaState.DRAINING and not self._retiring_now(replica):
                replica.state = ReplicaState.READY
                self._changed(replica, ReplicaEvent.READY)

    def _retiring_now(self, replica: Replica) -> bool:
        """Whether `replica` is on its way out (it stays draining through a resume)."""
        return False

    @abstractmethod
    async def reload(self, model: str) -> None:
        """Switch every replica to `model` atomically; raises ReloadFailed, and the old
        replicas keep serving, when that cannot be done."""

    @abstractmethod
    def suspect(self, replica: Replica, why: str) -> None:
        """A client of the engine saw it fail (connection reset): stop leasing it at once
        and check it; it comes back Ready if it still answers."""

    def _released(self, replica: Replica) -> None:  # noqa: B027 - a hook most sets skip
        """A lease on `replica` ended (a retiring replica may now go)."""

    # -- change notification -----------------------------------------------------------

    def _changed(self, replica: Replica, event: ReplicaEvent) -> None:
        self.on_change(replica, event)
        self._changes.notify()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, checked again after every replica change (wait
        on state, never on time). Bound it with `asyncio.timeout`."""
        await self._changes.wait_for(predicate)

    # -- queries -----------------------------------------------------------------------

    def snapshots(self) -> list[ReplicaSnapshot]:
        return [r.snapshot() for r in self.replicas]

    def get(self, replica_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.id == replica_id), None)

    @property
    def ready(self) -> bool:
        return any(r.state is ReplicaState.READY for r in self.replicas)

    def could_serve(self) -> bool:
        return not self.draining and any(r.could_serve for r in self.replicas)

    # -- leases ------------------------------------------------------------------------

    def lease(self, replica_id: str, slot: int | None = None) -> Lease:
        replica = self.get(replica_id)
        if replica is None or replica.state is not ReplicaState.READY:
            raise RuntimeError(f"replica {replica_id} cannot take a lease")
        return Lease(replica, slot)

    def release(self, lease: Lease) -> None:
        if lease.release():
            self._released(lease.replica)
