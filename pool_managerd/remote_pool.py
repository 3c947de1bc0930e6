"""A pool whose replicas run on pool-managerd agents on other hosts (the control plane's
side): the agents report their replicas' states and load; this mirrors them as `Replica`s
with the same states, leases and events as local ones, and sends the operator's verbs to
the agents as commands.

The data plane goes straight to each engine: a replica's adapter is made here from the
endpoint its agent reports, so tokens never pass through the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

import structlog

from pool_managerd.probe import poll_until
from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.replica import Replica, ReplicaEvent, ReplicaState
from pool_managerd.replica_set import ChangeHook, ReloadFailed, ReplicaSet
from pool_managerd.wire import FROM_WIRE
from worker_adapters.base import Capabilities, WorkerAdapter

log = structlog.get_logger("pool_managerd")

#: How long a suspected replica's endpoint is probed from here before it stays Unready
#: (until its agent reports it again).
SUSPECT_PROBE_S = 10.0


class CommandFailed(Exception):
    """The agent answered a command with an error, or went away before answering."""


class AgentLink(Protocol):
    """The control plane's handle on one connected agent."""

    agent_id: str
    host: str

    async def command(self, command: pb.Command) -> None:
        """Send `command` and wait for its result; raises CommandFailed."""


def replica_id(agent_id: str, local_id: str) -> str:
    """The control plane's id for replica `local_id` of agent `agent_id` (`tiny-r0@gpu-a`)."""
    return f"{local_id}@{agent_id}"


class RemotePool(ReplicaSet):
    def __init__(
        self,
        pool_id: str,
        engine: str,
        model: str,
        deterministic: bool,
        make_adapter: Callable[[str], WorkerAdapter],
        on_change: ChangeHook,
        agents: Iterable[str] | None = None,
    ) -> None:
        super().__init__(pool_id, model, on_change)
        self.engine = engine
        self.deterministic = deterministic
        self.make_adapter = make_adapter
        #: The agents allowed to serve this pool; None: any agent that offers it.
        self.allowed = None if agents is None else frozenset(agents)
        #: Agents connected now and serving this pool, by id.
        self.links: dict[str, AgentLink] = {}
        self._probes: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._reloading = False

    def allows(self, agent_id: str) -> bool:
        return self.allowed is None or agent_id in self.allowed

    # -- what the agents report (called by the hub) ----------------------------------

    def joined(self, link: AgentLink, replicas: Iterable[pb.ReplicaUpdate]) -> None:
        """An agent (re)registered with its full state: its replicas not in it are gone
        (it restarted), the rest are updated in place — never duplicated."""
        self.links[link.agent_id] = link
        reported = list(replicas)
        current = {replica_id(link.agent_id, u.replica_id) for u in reported}
        for replica in self._of(link.agent_id):
            if replica.id not in current:
                self._remove(replica)
        for update in reported:
            self.apply(link, update)
        if self.draining:  # a drain the agent missed while it was away
            self._spawn(self._tell(link, pb.Command(drain=pb.Drain())))

    def apply(self, link: AgentLink, update: pb.ReplicaUpdate) -> None:
        """One replica's new state, as its agent reports it."""
        rid = replica_id(link.agent_id, update.replica_id)
        self._stop_probe(rid)
        replica = self.get(rid)
        state = FROM_WIRE[update.state]
        if state is ReplicaState.STOPPED:
            if replica is not None:
                self._remove(replica)
            return
        if replica is None:
            replica = Replica(rid, self.engine, self.deterministic, 0, agent_id=link.agent_id)
            self.replicas.append(replica)
        replica.host = link.host
        replica.last_error = update.reason or None
        restarted = update.restarts > replica.restarts
        replica.restarts = update.restarts
        if state in (ReplicaState.READY, ReplicaState.DRAINING):
            self._serving(replica, update, drained=state is ReplicaState.DRAINING)
            serving = replica.state is ReplicaState.READY
            self._changed(replica, ReplicaEvent.READY if serving else ReplicaEvent.DRAINING)
            return
        replica.state = state
        if state is ReplicaState.FAILED:
            self.last_error = f"{rid}: {update.reason}"
            self._changed(replica, ReplicaEvent.FAILED)
        else:
            self._changed(replica, ReplicaEvent.RESTART if restarted else ReplicaEvent.DOWN)

    def _serving(self, replica: Replica, update: pb.ReplicaUpdate, *, drained: bool) -> None:
        if replica.adapter is None or replica.endpoint != update.endpoint:
            self._close_adapter(replica)
            replica.adapter = self.make_adapter(update.endpoint)
            replica.endpoint = update.endpoint
        caps = Capabilities(
            engine=self.engine, engine_version=update.engine_version, slots=update.slots,
            ctx_per_slot=update.ctx_per_slot or None, model=update.model,
            model_digest=update.model_digest,
        )  # fmt: skip
        replica.slots_total = 0  # as the engine reports (a reload may change it)
        replica.state = ReplicaState.STARTING
        replica.mark_ready(replica.adapter, caps)
        if drained or self.draining:
            replica.state = ReplicaState.DRAINING

    def load(self, link: AgentLink, report: pb.ReplicaLoad) -> None:
        replica = self.get(replica_id(link.agent_id, report.replica_id))
        if replica is None:
            return
        replica.engine_busy = report.engine_busy
        kv = report.kv_usage if report.HasField("kv_usage") else None
        replica.kv_free_fraction = None if kv is None else 1.0 - kv
        self._changed(replica, ReplicaEvent.STATS)

    def lost(self, agent_id: str, why: str) -> None:
        """The agent went away (stream closed, heartbeats missed): its replicas stop taking
        leases; tasks on them end or rerun as their engine streams do."""
        self.links.pop(agent_id, None)
        for replica in self._of(agent_id):
            self._stop_probe(replica.id)
            if replica.state in (ReplicaState.STOPPED, ReplicaState.FAILED):
                continue
            replica.state = ReplicaState.UNREADY
            replica.last_error = why
            self._changed(replica, ReplicaEvent.DOWN)

    def forget(self, agent_id: str) -> None:
        """The agent stayed away too long: its replicas leave the pool."""
        for replica in self._of(agent_id):
            self._remove(replica)

    def _of(self, agent_id: str) -> list[Replica]:
        return [r for r in self.replicas if r.agent_id == agent_id]

    def _remove(self, replica: Replica) -> None:
        self._stop_probe(replica.id)
        self._close_adapter(replica)
        self.replicas.remove(replica)
        replica.state = ReplicaState.STOPPED
        self._changed(replica, ReplicaEvent.REMOVED)

    def _close_adapter(self, replica: Replica) -> None:
        adapter, replica.adapter = replica.adapter, None
        if adapter is not None:  # its engine is gone or moved: streams on it end
            self._spawn(adapter.close())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the daemon's side of the interface ------------------------------------------

    def start(self) -> None:
        """Nothing to start here: replicas appear as agents join."""

    async def stop(self) -> None:
        """Let go of the replicas; their engines keep running under their agents (a
        restarted control plane, or another one, takes them over)."""
        for task in self._probes.values():
            task.cancel()
        for replica in self.replicas:
            replica.state = ReplicaState.STOPPED
            if replica.adapter is not None:
                await replica.adapter.close()

    def suspect(self, replica: Replica, why: str) -> None:
        """Probe its endpoint from here: the agent may see a healthy engine that this host
        cannot reach. Ready again if it answers; else Unready until its agent reports."""
        if replica.state is not ReplicaState.READY or replica.adapter is None:
            return
        replica.state = ReplicaState.UNREADY
        replica.last_error = why
        self._changed(replica, ReplicaEvent.DOWN)
        self._probes[replica.id] = asyncio.create_task(self._probe(replica, replica.adapter))

    async def _probe(self, replica: Replica, adapter: WorkerAdapter) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SUSPECT_PROBE_S):
                await poll_until(adapter.ready)
                self._probes.pop(replica.id, None)
                replica.state = ReplicaState.DRAINING if self.draining else ReplicaState.READY
                self._changed(replica, ReplicaEvent.READY)

    def _stop_probe(self, rid: str) -> None:
        task = self._probes.pop(rid, None)
        if task is not None:
            task.cancel()

    def drain(self) -> None:
        """No new leases from now (here, at once); each agent drains its engines too."""
        super().drain()
        self._broadcast(pb.Command(drain=pb.Drain()))

    def resume(self) -> None:
        super().resume()
        self._broadcast(pb.Command(resume=pb.Resume()))

    def _broadcast(self, command: pb.Command) -> None:
        for link in list(self.links.values()):
            self._spawn(self._tell(link, command))

    async def _tell(self, link: AgentLink, command: pb.Command) -> None:
        """A command whose result is only logged (drain, resume: this side already acts)."""
        command.pool_id = self.pool_id
        try:
            await link.command(command)
        except CommandFailed as e:
            log.warning(
                "agent command failed", pool_id=self.pool_id, agent_id=link.agent_id,
                command=command.WhichOneof("action"), error=str(e),
            )  # fmt: skip

    async def stop_on(self, link: AgentLink) -> None:
        """Stop this pool's engines on one agent (it reports its replicas stopped)."""
        await self._tell(link, pb.Command(stop=pb.Stop()))

    async def reload(self, model: str) -> None:
        """Every agent serving the pool reloads its engines to `model` (a name its node
        config knows); fails naming each agent that could not."""
        if self._reloading:
            raise ReloadFailed("a reload is already in progress")
        links = list(self.links.values())
        if not links:
            raise ReloadFailed(f"no agent serving pool {self.pool_id!r} is connected")
        self._reloading = True
        try:
            command = pb.Command(pool_id=self.pool_id, reload=pb.Reload(model=model))
            results = await asyncio.gather(
                *(link.command(command) for link in links), return_exceptions=True
            )
        finally:
            self._reloading = False
        failed = [
            f"{link.agent_id}: {result}"
            for link, result in zip(links, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            self.last_error = f"reload to {model!r} failed on " + "; ".join(failed)
            raise ReloadFailed(self.last_error)
        self.model = model
        self.last_error = None
