"""One pool's replicas: start, readiness, supervision with restart backoff, drain, reload.

Every replica has a supervisor task: launch → wait until the engine's own health probe says
Ready → watch until it is gone → restart with exponential backoff and jitter; after
`max_restarts` consecutive failures it stays FAILED with `last_error` set. The pool tells
its owner about every change through `on_change`, so the dispatcher can react at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

import structlog

from pool_managerd.launchers import Launched, Launcher
from pool_managerd.probe import Aborted, poll_until
from pool_managerd.replica import Replica, ReplicaEvent, ReplicaState
from pool_managerd.replica_set import ChangeHook, ReloadFailed, ReplicaSet

log = structlog.get_logger("pool_managerd")


@dataclass(frozen=True)
class PoolSpec:
    id: str
    engine: str
    model: str
    replicas: int
    slots: int
    deterministic: bool
    start_timeout_s: float = 120.0
    max_restarts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    #: How often the engine's own load (busy, KV usage) is read while it serves.
    stats_interval_s: float = 2.0


def describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out waiting for the engine to become Ready"
    return str(e) or type(e).__name__


class PoolManager(ReplicaSet):
    """Replicas spawned (or attached to) on this host, each under its own supervisor."""

    def __init__(self, spec: PoolSpec, launcher: Launcher, on_change: ChangeHook) -> None:
        super().__init__(spec.id, spec.model, on_change)
        self.spec = spec
        self.launcher = launcher
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._retiring: dict[str, asyncio.Event] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._suspected: dict[str, asyncio.Event] = {}
        self._next_index = 0
        self._stopping = False
        self._reloading = False

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start every replica's supervisor (returns at once; readiness follows)."""
        for _ in range(self.spec.replicas):
            self._add(self._new_replica(), self.model, None)

    async def stop(self) -> None:
        """Stop every engine; returns when all are gone."""
        self._stopping = True
        tasks = list(self._supervisors.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for replica in self.replicas:
            replica.state = ReplicaState.STOPPED

    def _new_replica(self) -> Replica:
        rid = f"{self.spec.id}-r{self._next_index}"
        self._next_index += 1
        return Replica(rid, self.spec.engine, self.spec.deterministic, self.spec.slots)

    def _add(self, replica: Replica, model: str, launched: Launched | None) -> None:
        self.replicas.append(replica)
        task = asyncio.create_task(self._supervise(replica, model, launched))
        self._supervisors[replica.id] = task

    def _released(self, replica: Replica) -> None:
        if replica.busy == 0:
            idle = self._retiring.get(replica.id)
            if idle is not None:
                idle.set()

    # -- supervision ---------------------------------------------------------------

    async def _start_engine(self, replica: Replica, model: str) -> Launched:
        """Launch one engine and wait until it is Ready; stops it again on failure."""
        launched = await self.launcher.launch(replica.id, model)
        replica.endpoint = launched.endpoint
        replica.pid = launched.pid
        try:
            async with asyncio.timeout(self.spec.start_timeout_s):
                await self._wait_ready(launched)
            caps = await launched.adapter.capabilities()
        except BaseException:
            await launched.stop()
            raise
        replica.mark_ready(launched.adapter, caps)
        if self.draining:  # a replica that (re)starts in a drained pool takes no leases
            replica.state = ReplicaState.DRAINING
        replica.last_error = None
        return launched

    async def _wait_ready(self, launched: Launched) -> None:
        gone = asyncio.ensure_future(launched.gone())
        try:
            await poll_until(launched.adapter.ready, abort=gone)
        except Aborted as e:
            raise RuntimeError(f"engine exited while loading: {e}") from None
        finally:
            gone.cancel()

    async def _supervise(self, replica: Replica, model: str, launched: Launched | None) -> None:
        failures = 0
        while True:
            try:
                if launched is None:
                    replica.state = ReplicaState.STARTING
                    launched = await self._start_engine(replica, model)
                failures = 0
                log.info(
                    "replica ready",
                    pool_id=self.spec.id,
                    replica_id=replica.id,
                    engine=replica.engine,
                    engine_version=replica.engine_version,
                )
                self._changed(replica, ReplicaEvent.READY)
                reason = await self._watch(replica, launched)
            except asyncio.CancelledError:
                if launched is not None:
                    with contextlib.suppress(Exception):
                        await launched.stop()
                raise
            except Exception as e:  # launch failed, timed out, or died while loading
                reason = describe(e)
            if launched is not None:
                with contextlib.suppress(Exception):
                    await launched.stop()
                launched = None
            replica.adapter = None
            replica.pid = None
            replica.last_error = reason
            self.last_error = f"{replica.id}: {reason}"
            if self._stopping or replica.id in self._retiring:
                replica.state = ReplicaState.STOPPED
                return
            replica.state = ReplicaState.UNREADY
            log.warning("replica down", pool_id=self.spec.id, replica_id=replica.id, error=reason)
            self._changed(replica, ReplicaEvent.DOWN)
            failures += 1
            if failures > self.spec.max_restarts:
                replica.state = ReplicaState.FAILED
                log.error(
                    "replica failed; not restarting",
                    pool_id=self.spec.id,
                    replica_id=replica.id,
                    failures=failures,
                    error=reason,
                )
                self._changed(replica, ReplicaEvent.FAILED)
                return
            delay = min(self.spec.backoff_max_s, self.spec.backoff_base_s * 2 ** (failures - 1))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: no thundering herd
            replica.restarts += 1
            self._changed(replica, ReplicaEvent.RESTART)

    def suspect(self, replica: Replica, why: str) -> None:
        """Its supervisor checks it at once."""
        if replica.state is not ReplicaState.READY:
            return
        replica.state = ReplicaState.UNREADY
        replica.last_error = why
        self._changed(replica, ReplicaEvent.DOWN)
        event = self._suspected.get(replica.id)
        if event is not None:
            event.set()

    async def _watch(self, replica: Replica, launched: Launched) -> str:
        """Until the engine is gone; re-checks it at once when it is suspected."""
        suspected = self._suspected.setdefault(replica.id, asyncio.Event())
        while True:
            suspected.clear()
            gone = asyncio.ensure_future(launched.gone())
            flagged = asyncio.ensure_future(suspected.wait())
            try:
                while not (gone.done() or flagged.done()):
                    await asyncio.wait(
                        {gone, flagged},
                        timeout=self.spec.stats_interval_s,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not (gone.done() or flagged.done()):
                        await self._read_stats(replica, launched)
            finally:
                flagged.cancel()
                if not gone.done():
                    gone.cancel()
            if gone.done() and not gone.cancelled():
                return gone.result()
            if launched.exited is not None and launched.exited.done():
                return launched.exited.result()
            if not await launched.adapter.ready():
                return f"stopped answering after: {replica.last_error}"
            if replica.state is ReplicaState.UNREADY:  # a false alarm: serve again
                replica.state = ReplicaState.DRAINING if self.draining else ReplicaState.READY
                self._changed(replica, ReplicaEvent.READY)

    async def _read_stats(self, replica: Replica, launched: Launched) -> None:
        try:
            stats = await launched.adapter.stats()
        except Exception:  # the health watch decides whether the engine is gone
            return
        replica.engine_busy = stats.busy
        replica.kv_free_fraction = None if stats.kv_usage is None else 1.0 - stats.kv_usage
        self._changed(replica, ReplicaEvent.STATS)

    # -- drain and reload ----------------------------------------------------------

    def _retiring_now(self, replica: Replica) -> bool:
        return replica.id in self._retiring  # a reload retires it

    async def reload(self, model: str) -> None:
        """Start a full set of replicas on `model`; switch over only when all are Ready,
        then retire the old ones as their running tasks finish. On failure the new ones are
        stopped (rollback)."""
        if self._reloading:
            raise ReloadFailed("a reload is already in progress")
        self._reloading = True
        try:
            fresh = [self._new_replica() for _ in range(self.spec.replicas)]
            results = await asyncio.gather(
                *(self._start_engine(r, model) for r in fresh), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for result in results:
                    if not isinstance(result, BaseException):
                        await result.stop()
                self.last_error = f"reload to {model!r} failed, rolled back: {describe(errors[0])}"
                log.error(
                    "reload failed; rolled back",
                    pool_id=self.spec.id,
                    model=model,
                    error=str(errors[0]),
                )
                raise ReloadFailed(self.last_error)
            old = list(self.replicas)
            for replica, launched in zip(fresh, results, strict=True):
                assert isinstance(launched, Launched)
                self._add(replica, model, launched)
            self.model = model
            self.last_error = None
            for replica in old:
                self._retire(replica)
            log.info("reload switched over", pool_id=self.spec.id, model=model)
        finally:
            self._reloading = False

    def _retire(self, replica: Replica) -> None:
        idle = asyncio.Event()
        self._retiring[replica.id] = idle
        if replica.state is ReplicaState.READY:
            replica.state = ReplicaState.DRAINING
        if replica.busy == 0:
            idle.set()
        self._changed(replica, ReplicaEvent.DRAINING)
        task = asyncio.create_task(self._remove_when_idle(replica, idle))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _remove_when_idle(self, replica: Replica, idle: asyncio.Event) -> None:
        await idle.wait()
        task = self._supervisors.pop(replica.id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.replicas.remove(replica)
        self._retiring.pop(replica.id, None)
        replica.state = ReplicaState.STOPPED
        self._changed(replica, ReplicaEvent.REMOVED)
