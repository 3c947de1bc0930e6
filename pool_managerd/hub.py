"""The control plane's end of the agent protocol: a gRPC service that pool-managerd agents
dial out to, one bidirectional stream each (contracts/proto/pool_manager.proto).

An agent authenticates with the join token (call metadata, compared in constant time),
registers with Hello (its pools and every replica it runs), then streams replica changes,
load and heartbeats; commands go back on the same stream. A closed stream, or no message
for `heartbeat_misses` heartbeat intervals, loses the agent: its replicas go Unready at
once, and leave their pools if it has not rejoined after `forget_after_s`. Every refusal
ends the call with a status that says why, is logged, and registers nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from pool_managerd.node_config import ID_PATTERN
from pool_managerd.probe import Changes
from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.proto import pool_manager_pb2_grpc as pb_grpc
from pool_managerd.remote_pool import CommandFailed, RemotePool
from pool_managerd.wire import AUTH_METADATA, PROTOCOL_VERSION

log = structlog.get_logger("pool_managerd")

_ID = re.compile(ID_PATTERN)


class Refused(Exception):
    """An agent's call is ended with `code` and `why`."""

    def __init__(self, code: grpc.StatusCode, why: str) -> None:
        super().__init__(why)
        self.code = code


@dataclass
class AgentSession:
    """One agent as the control plane knows it: connected now, or lost and remembered
    until it rejoins or is forgotten."""

    agent_id: str
    host: str
    version: str
    pools: list[str]
    peer: str
    connected: bool = True
    #: Loop time of the last message (seconds).
    last_seen: float = 0.0
    #: Why it is not connected, once it is not.
    lost_reason: str | None = None
    gpus: list[pb.GpuStats] = field(default_factory=list)
    #: The latest command that ended: (pool, action, error or None when it succeeded).
    last_command: tuple[str, str, str | None] | None = None
    #: Called when a command ends (the hub's change notification).
    on_settled: Callable[[], None] = lambda: None
    _context: Any = None
    _pending: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _write: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def command(self, command: pb.Command) -> None:
        """Send `command`; return when the agent reports success, raise CommandFailed."""
        if not self.connected:
            raise CommandFailed("the agent is not connected")
        message = pb.Command()
        message.CopyFrom(command)
        message.id = next(self._ids)
        result = self._pending[message.id] = asyncio.get_running_loop().create_future()
        action = message.WhichOneof("action") or ""
        try:
            async with self._write:
                try:
                    await self._context.write(pb.ControlMessage(command=message))
                except Exception as e:  # the stream ended under the write
                    raise CommandFailed(f"could not send it: {e or type(e).__name__}") from e
            await result
        except CommandFailed as e:
            self.last_command = (message.pool_id, action, str(e))
            raise
        else:
            self.last_command = (message.pool_id, action, None)
        finally:
            self._pending.pop(message.id, None)
            self.on_settled()

    def settle(self, result: pb.CommandResult) -> None:
        future = self._pending.get(result.id)
        if future is None or future.done():
            return
        if result.ok:
            future.set_result(None)
        else:
            future.set_exception(CommandFailed(result.error or "failed"))

    def disconnected(self, why: str) -> None:
        self.connected = False
        self.lost_reason = why
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CommandFailed(f"the agent went away: {why}"))


class AgentHub(pb_grpc.PoolManagerControlServicer):
    def __init__(
        self,
        pools: Mapping[str, RemotePool],
        token: str,
        *,
        heartbeat_interval_s: float = 2.0,
        heartbeat_misses: int = 3,
        forget_after_s: float = 300.0,
    ) -> None:
        self.pools = pools
        self._token = token.encode()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_misses = heartbeat_misses
        self.forget_after_s = forget_after_s
        #: Every agent known, connected or lost, by id.
        self.agents: dict[str, AgentSession] = {}
        #: Called with the agent after it joined, reported, beat, was lost or forgotten.
        self.on_change: Callable[[AgentSession], None] = lambda agent: None
        self._forget_timers: dict[str, asyncio.TimerHandle] = {}
        #: Notified after every agent change: `await hub.changes.wait_for(predicate)`.
        self.changes = Changes()

    def _changed(self, agent: AgentSession) -> None:
        self.on_change(agent)
        self.changes.notify()

    # -- the RPC ---------------------------------------------------------------------

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        session: AgentSession | None = None
        why = "the stream ended"
        try:
            first = await self._hello(context)
            self._authenticate(context)
            session = await self._register(first, context)
            why = await self._serve(session, context)
        except Refused as e:
            why = str(e)
            log.warning(
                "agent call ended", peer=context.peer(), code=e.code.name, error=why,
                agent_id=session.agent_id if session else None,
            )  # fmt: skip
            await context.abort(e.code, why)
        except asyncio.CancelledError:
            why = "the connection closed"
            raise
        finally:
            if session is not None:
                self._lost(session, why)

    def _authenticate(self, context: Any) -> None:
        metadata = dict(context.invocation_metadata() or ())
        given = str(metadata.get(AUTH_METADATA, ""))
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), self._token):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong join token")

    async def _hello(self, context: Any) -> Any:
        """The call's first message, read *before* the call is judged (None if none came
        within the heartbeat window). Refusing a call while the agent's Hello is still
        being written makes that write fail, and grpcio's asyncio client then reports
        INTERNAL "Internal error from Core" instead of the status sent (grpc/grpc#36066):
        the agent would not learn that its token was wrong. Once the Hello has been read,
        no write of the agent's is in flight when the refusal arrives."""
        try:
            async with asyncio.timeout(self.heartbeat_interval_s * self.heartbeat_misses):
                return await context.read()
        except TimeoutError:
            return None

    async def _register(self, first: Any, context: Any) -> AgentSession:
        if first is None:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "no Hello within the heartbeat window")
        if first is grpc.aio.EOF:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the stream ended before Hello")
        if first.WhichOneof("kind") != "hello":
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        hello = first.hello
        self._check_hello(hello)
        session = AgentSession(
            hello.agent_id, hello.host or context.peer(), hello.agent_version,
            [offer.pool_id for offer in hello.pools], context.peer(),
            last_seen=asyncio.get_running_loop().time(), _context=context,
        )  # fmt: skip
        session.on_settled = lambda: self._changed(session)
        previous = self.agents.get(session.agent_id)
        # first: from now on the older stream's end is not this agent's loss
        self.agents[session.agent_id] = session
        timer = self._forget_timers.pop(session.agent_id, None)
        if timer is not None:
            timer.cancel()
        if previous is not None and previous.connected:  # the newer connection wins
            previous.disconnected("replaced by a newer connection of the same agent")
            with contextlib.suppress(Exception):  # abort raises in its caller, by design
                await previous._context.abort(
                    grpc.StatusCode.ABORTED, "replaced by a newer connection of the same agent"
                )
        await context.write(pb.ControlMessage(welcome=pb.Welcome(
            protocol_version=PROTOCOL_VERSION,
            heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000),
            heartbeat_misses=self.heartbeat_misses,
        )))  # fmt: skip
        for pool_id in session.pools:
            self.pools[pool_id].joined(session, [u for u in hello.replicas if u.pool_id == pool_id])
        log.info(
            "agent joined", agent_id=session.agent_id, host=session.host,
            pools=session.pools, replicas=len(hello.replicas), peer=session.peer,
        )  # fmt: skip
        self._changed(session)
        return session

    def _check_hello(self, hello: pb.Hello) -> None:
        if hello.protocol_version != PROTOCOL_VERSION:
            raise Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the agent speaks protocol version {hello.protocol_version}; this control "
                f"plane speaks version {PROTOCOL_VERSION}",
            )
        if not _ID.match(hello.agent_id):
            raise Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"agent_id {hello.agent_id!r} must match {ID_PATTERN}",
            )
        if not hello.pools:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "Hello names no pools")
        for offer in hello.pools:
            pool = self.pools.get(offer.pool_id)
            if pool is None or not pool.allows(hello.agent_id):
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"agent {hello.agent_id!r} may not serve pool {offer.pool_id!r}: it is "
                    "not a remote pool of this control plane that allows this agent",
                )
            if offer.engine != pool.engine or offer.deterministic != pool.deterministic:
                raise Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"pool {offer.pool_id!r} runs engine {pool.engine!r} "
                    f"(deterministic: {pool.deterministic}); the agent offers "
                    f"{offer.engine!r} (deterministic: {offer.deterministic})",
                )
        offered = {offer.pool_id for offer in hello.pools}
        for update in hello.replicas:
            _check_update(update, offered)

    async def _serve(self, session: AgentSession, context: Any) -> str:
        """Until the agent closes the stream (returns why), or raises Refused."""
        loop = asyncio.get_running_loop()
        window = self.heartbeat_interval_s * self.heartbeat_misses
        offered = set(session.pools)
        while True:
            try:
                async with asyncio.timeout(window):
                    message = await context.read()
            except TimeoutError:
                raise Refused(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {window:g} s ({self.heartbeat_misses} heartbeats missed)",
                ) from None
            if message is grpc.aio.EOF:
                return "the agent closed the stream"
            session.last_seen = loop.time()
            kind = message.WhichOneof("kind")
            if kind == "heartbeat":
                session.gpus = list(message.heartbeat.gpus)
                self._changed(session)
            elif kind == "replica":
                _check_update(message.replica, offered)
                self.pools[message.replica.pool_id].apply(session, message.replica)
                self._changed(session)
            elif kind == "load":
                if message.load.pool_id in offered:
                    self.pools[message.load.pool_id].load(session, message.load)
            elif kind == "result":
                session.settle(message.result)
            else:
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unexpected message kind {kind!r}")

    def _lost(self, session: AgentSession, why: str) -> None:
        if self.agents.get(session.agent_id) is not session:
            return  # replaced by its newer connection, which owns the replicas now
        session.disconnected(why)
        log.warning("agent lost", agent_id=session.agent_id, host=session.host, error=why)
        for pool_id in session.pools:
            self.pools[pool_id].lost(session.agent_id, f"agent {session.agent_id} lost: {why}")
        self._changed(session)
        loop = asyncio.get_running_loop()
        self._forget_timers[session.agent_id] = loop.call_later(
            self.forget_after_s, self._forget, session
        )

    def _forget(self, session: AgentSession) -> None:
        self._forget_timers.pop(session.agent_id, None)
        if self.agents.get(session.agent_id) is not session or session.connected:
            return
        del self.agents[session.agent_id]
        for pool_id in session.pools:
            self.pools[pool_id].forget(session.agent_id)
        log.warning("agent forgotten", agent_id=session.agent_id, after_s=self.forget_after_s)
        self._changed(session)

    def close(self) -> None:
        for timer in self._forget_timers.values():
            timer.cancel()


def _check_update(update: pb.ReplicaUpdate, offered: set[str]) -> None:
    if update.pool_id not in offered:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"replica {update.replica_id!r} names pool {update.pool_id!r}, which the agent "
            "did not offer in Hello",
        )
    if not _ID.match(update.replica_id):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"replica_id {update.replica_id!r} must match {ID_PATTERN}",
        )
    serving = update.state in (pb.REPLICA_STATE_READY, pb.REPLICA_STATE_DRAINING)
    if serving and not update.endpoint.startswith(("http://", "https://")):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"replica {update.replica_id!r} is ready without an http(s) endpoint",
        )
    if update.state == pb.REPLICA_STATE_UNSPECIFIED:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"replica {update.replica_id!r} has no state"
        )


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    #: Require client certificates signed by this CA; None: any client (token only).
    client_ca: str | None = None


async def serve(hub: AgentHub, listen: str, tls: TlsFiles | None) -> tuple[Any, int]:
    """Start the gRPC server for `hub` on `listen` (host:port); returns it and its port."""
    server = grpc.aio.server()
    pb_grpc.add_PoolManagerControlServicer_to_server(hub, server)  # type: ignore[no-untyped-call]
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        key, cert, ca = await asyncio.to_thread(_read_tls, tls)
        credentials = grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen for agents on {listen}")
    await server.start()
    return server, port


def _read_tls(tls: TlsFiles) -> tuple[bytes, bytes, bytes | None]:
    ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
    return Path(tls.key).read_bytes(), Path(tls.cert).read_bytes(), ca
