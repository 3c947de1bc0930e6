"""pool-managerd as an agent on an engine host: it runs the node's pools with the same
launchers and supervision the daemon embeds, and dials out to the control plane.

One bidirectional gRPC stream per connection (contracts/proto/pool_manager.proto): Hello
with every replica, then every replica change, the engines' load, heartbeats with the
host's GPUs, and the results of the control plane's commands. The engines keep serving
while the agent is disconnected; it reconnects with exponential backoff and jitter, trying
each control-plane address in turn, and registers its whole state again. Engines die with
the agent (as with the daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata

import grpc
import structlog

from pool_managerd.gpu import read_gpus
from pool_managerd.launchers import (
    AttachLauncher,
    Launcher,
    LlamaServerLauncher,
    LlamaServerOptions,
)
from pool_managerd.node_config import NodeConfig, NodePool
from pool_managerd.pool import PoolManager, PoolSpec
from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.proto import pool_manager_pb2_grpc as pb_grpc
from pool_managerd.replica import Replica, ReplicaEvent
from pool_managerd.replica_set import ReloadFailed
from pool_managerd.wire import AUTH_METADATA, PROTOCOL_VERSION, TO_WIRE
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.tgi_http import TGIAdapter

log = structlog.get_logger("pool_managerd")

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0

#: Adapters the agent probes attached engines with (the control plane streams from them
#: with its own).
_PROBES = {"llamacpp": LlamaCppAdapter, "tgi": TGIAdapter}


@dataclass(frozen=True)
class ControlPlane:
    """Where and how the agent joins: `grpc://host:port` (plaintext) or `grpcs://` (TLS)."""

    addresses: Sequence[str]
    token: str
    #: TLS: the CA that signed the control plane's certificate (None: the system's roots).
    ca: bytes | None = None
    #: TLS client certificate and key, when the control plane requires them.
    cert: bytes | None = None
    key: bytes | None = None

    def __post_init__(self) -> None:
        for address in self.addresses:
            scheme, _, target = address.partition("://")
            if scheme not in ("grpc", "grpcs") or not target:
                raise ValueError(f"join address {address!r}: use grpc://host:port or grpcs://")

    def channel(self, address: str) -> grpc.aio.Channel:
        scheme, _, target = address.partition("://")
        if scheme == "grpc":
            return grpc.aio.insecure_channel(target)
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        return grpc.aio.secure_channel(target, credentials)


def launcher_for(pool: NodePool, engine_host: str) -> Launcher:
    managed = pool.managed
    if managed is None:
        probe = _PROBES[pool.engine]
        return AttachLauncher(
            list(pool.endpoints or ()), probe, pool.health_interval_s, pool.health_misses
        )
    return LlamaServerLauncher(LlamaServerOptions(
        slots=pool.slots, ctx=managed.ctx, threads=managed.threads, args=tuple(managed.args),
        deterministic=pool.deterministic, health_interval_s=pool.health_interval_s,
        health_misses=pool.health_misses, host=engine_host,
    ))  # fmt: skip


def spec_for(pool: NodePool) -> PoolSpec:
    return PoolSpec(
        id=pool.id, engine=pool.engine, model=pool.model_refs()[pool.model],
        replicas=pool.replica_count, slots=pool.slots, deterministic=pool.deterministic,
        start_timeout_s=pool.start_timeout_s, max_restarts=pool.max_restarts,
        backoff_base_s=pool.restart_backoff_s, stats_interval_s=pool.health_interval_s,
    )  # fmt: skip


class Agent:
    def __init__(self, node: NodeConfig, control: ControlPlane) -> None:
        self.node = node
        self.control = control
        self.pools = {pool.id: pool for pool in node.pools}
        self.managers = {
            pool.id: PoolManager(
                spec_for(pool), launcher_for(pool, node.agent.engine_host),
                partial(self._on_change, pool.id),
            )
            for pool in node.pools
        }  # fmt: skip
        #: What goes to the control plane on the current stream; None while disconnected
        #: (changes then are not queued: the next Hello carries the whole state).
        self._outbox: asyncio.Queue[pb.AgentMessage] | None = None
        self._commands: set[asyncio.Task[None]] = set()
        #: Whether the current stream got past Hello.
        self.joined = False

    async def run(self, stop: asyncio.Event) -> None:
        """Start the engines, stay joined until `stop` is set, then stop the engines."""
        for manager in self.managers.values():
            manager.start()
        joined = asyncio.create_task(self._stay_joined())
        try:
            await stop.wait()
        finally:
            joined.cancel()
            await asyncio.gather(joined, return_exceptions=True)
            await asyncio.gather(*(m.stop() for m in self.managers.values()))

    async def _stay_joined(self) -> None:
        failures = 0
        for address in itertools.cycle(self.control.addresses):
            self.joined = False
            try:
                await self._session(address)
                log.warning("the control plane closed the stream", address=address)
            except JoinFailed as e:
                level = log.warning if e.code is grpc.StatusCode.UNAVAILABLE else log.error
                event = "stream ended" if self.joined else "join failed"
                level(event, address=address, code=e.code.name, error=e.details)
            except ConnectionError as e:
                log.error("join failed", address=address, error=str(e))
            except Exception:  # whatever else breaks a stream, the agent stays up and rejoins
                log.exception("stream failed", address=address)
            finally:
                self._outbox = None
            failures = 0 if self.joined else failures + 1  # a joined stream starts afresh
            delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(failures - 1, 0))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: no herd

    async def _session(self, address: str) -> None:
        """One stream, until the control plane closes it; raises JoinFailed with the
        status it ended with otherwise."""
        async with self.control.channel(address) as channel:
            call = pb_grpc.PoolManagerControlStub(channel).Connect(  # type: ignore[no-untyped-call]
                metadata=((AUTH_METADATA, f"Bearer {self.control.token}"),)
            )
            try:
                await self._converse(call, address)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as e:
                # a write that raced the control plane's ending of the call ("RPC already
                # finished", or INTERNAL) does not say why: the call's own status does
                raise JoinFailed(*await _final_status(call, e)) from None

    async def _converse(self, call: grpc.aio.StreamStreamCall, address: str) -> None:
        outbox: asyncio.Queue[pb.AgentMessage] = asyncio.Queue()
        self._outbox = outbox  # before Hello is built: later changes follow it
        await call.write(pb.AgentMessage(hello=self._hello()))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
            raise ConnectionError("the control plane did not answer Hello with Welcome")
        self.joined = True
        log.info("joined", address=address, agent_id=self.node.agent.id)
        beat = asyncio.create_task(self._heartbeat(outbox, first.welcome.heartbeat_interval_ms))
        sender = asyncio.create_task(_send(call, outbox))
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                if message.WhichOneof("kind") == "command":
                    task = asyncio.create_task(self._run_command(message.command, outbox))
                    self._commands.add(task)
                    task.add_done_callback(self._commands.discard)
        finally:
            beat.cancel()
            sender.cancel()
            await asyncio.gather(beat, sender, return_exceptions=True)

    def _hello(self) -> pb.Hello:
        identity = self.node.agent
        offers = [
            pb.PoolOffer(
                pool_id=pool.id, engine=pool.engine, model=self.managers[pool.id].model,
                replicas=pool.replica_count, deterministic=pool.deterministic,
            )
            for pool in self.node.pools
        ]  # fmt: skip
        replicas = [
            self._update(pool_id, replica)
            for pool_id, manager in self.managers.items()
            for replica in manager.replicas
        ]
        return pb.Hello(
            protocol_version=PROTOCOL_VERSION, agent_id=identity.id, host=identity.host,
            pools=offers, agent_version=metadata.version("orchestratord"), replicas=replicas,
        )  # fmt: skip

    def _update(self, pool_id: str, replica: Replica) -> pb.ReplicaUpdate:
        return pb.ReplicaUpdate(
            pool_id=pool_id, replica_id=replica.id, state=TO_WIRE[replica.state],
            reason=replica.last_error or "", endpoint=replica.endpoint or "",
            engine_version=replica.engine_version, model_digest=replica.model_digest,
            slots=replica.slots_total, ctx_per_slot=replica.ctx_per_slot or 0,
            restarts=replica.restarts, model=self.managers[pool_id].model,
        )  # fmt: skip

    def _on_change(self, pool_id: str, replica: Replica, event: ReplicaEvent) -> None:
        outbox = self._outbox
        if outbox is None:
            return
        if event is ReplicaEvent.STATS:
            kv = None if replica.kv_free_fraction is None else 1.0 - replica.kv_free_fraction
            outbox.put_nowait(pb.AgentMessage(load=pb.ReplicaLoad(
                pool_id=pool_id, replica_id=replica.id, engine_busy=replica.engine_busy or 0,
                kv_usage=kv,
            )))  # fmt: skip
        else:  # REMOVED replicas are STOPPED by then: the control plane forgets them
            outbox.put_nowait(pb.AgentMessage(replica=self._update(pool_id, replica)))

    async def _heartbeat(self, outbox: asyncio.Queue[pb.AgentMessage], interval_ms: int) -> None:
        while True:
            gpus = await asyncio.to_thread(read_gpus)
            outbox.put_nowait(pb.AgentMessage(heartbeat=pb.Heartbeat(
                sent_ms=int(time.monotonic() * 1000),
                gpus=[pb.GpuStats(
                    index=g.index, name=g.name, memory_used_bytes=g.memory_used_bytes,
                    memory_total_bytes=g.memory_total_bytes,
                    utilization_percent=g.utilization_percent,
                ) for g in gpus],
            )))  # fmt: skip
            await asyncio.sleep(max(interval_ms, 100) / 1000)

    async def _run_command(
        self, command: pb.Command, outbox: asyncio.Queue[pb.AgentMessage]
    ) -> None:
        action = command.WhichOneof("action")
        log.info("command", pool_id=command.pool_id, action=action, command_id=command.id)
        try:
            await self._apply(command)
            result = pb.CommandResult(id=command.id, ok=True)
        except (ReloadFailed, LookupError) as e:
            log.error("command failed", pool_id=command.pool_id, action=action, error=str(e))
            result = pb.CommandResult(id=command.id, ok=False, error=str(e))
        outbox.put_nowait(pb.AgentMessage(result=result))

    async def _apply(self, command: pb.Command) -> None:
        manager = self.managers.get(command.pool_id)
        if manager is None:
            raise LookupError(f"this agent does not serve pool {command.pool_id!r}")
        action = command.WhichOneof("action")
        if action == "drain":
            manager.drain()
        elif action == "resume":
            manager.resume()
        elif action == "reload":
            refs = self.pools[command.pool_id].model_refs()
            name = command.reload.model
            if name not in refs:
                raise LookupError(
                    f"model {name!r} is not one this agent knows for pool {command.pool_id!r} "
                    f"(one of {sorted(refs)})"
                )
            await manager.reload(refs[name])
        elif action == "stop":
            replicas = list(manager.replicas)
            await manager.stop()
            for replica in replicas:
                self._on_change(command.pool_id, replica, ReplicaEvent.REMOVED)
        else:
            raise LookupError(f"unknown command {action!r}")


class JoinFailed(Exception):
    """The stream ended with a status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


async def _final_status(
    call: grpc.aio.StreamStreamCall, error: Exception
) -> tuple[grpc.StatusCode, str]:
    """Why the call ended: its own status, else what `error` says."""
    try:
        async with asyncio.timeout(5):
            code, details = await call.code(), await call.details()
    except TimeoutError:
        code = grpc.StatusCode.OK
    if code is not grpc.StatusCode.OK:
        return code, details
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code(), error.details() or ""
    return grpc.StatusCode.UNKNOWN, str(error)


async def _send(call: grpc.aio.StreamStreamCall, outbox: asyncio.Queue[pb.AgentMessage]) -> None:
    while True:
        message = await outbox.get()
        with contextlib.suppress(asyncio.InvalidStateError):  # the call just ended
            await call.write(message)
