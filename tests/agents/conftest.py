"""pool-managerd agents as real processes (`pool-managerd serve`), each running a real
llama-server on the tiny model, joined to an in-process orchestratord over gRPC on
loopback. Tests wait on states (the pools' and the hub's change notifications), never on
time."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pool_managerd.hub import AgentHub
from pool_managerd.launchers import die_with_parent
from pool_managerd.remote_pool import RemotePool
from tests.helpers import BIN, Api

#: Agents beat every 0.2 s; three missed (0.6 s of silence) lose one.
HEARTBEAT = {"heartbeat_interval_s": 0.2, "heartbeat_misses": 3}


def remote_pool(id: str = "tiny", agents: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": id, "engine": "llamacpp", "model": id, "queue": {"capacity": 64},
        "replicas": {"remote": {} if agents is None else {"agents": agents}},
        "bytes_per_token": 1, **extra,
    }  # fmt: skip


def agents_server(token_file: Path, port: int = 0, **extra: Any) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{port}", "token_file": str(token_file), **HEARTBEAT, **extra}


class AgentProcess:
    """One `pool-managerd serve` on this host, its log in a file."""

    def __init__(self, tmp: Path, agent_id: str, model: Path, **pool: Any) -> None:
        self.dir = tmp / agent_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.agent_id = agent_id
        self.log = self.dir / "agent.log"
        self.node = {
            "agent": {"id": agent_id, "host": f"{agent_id}.test"},
            "pools": [{
                "id": "tiny", "engine": "llamacpp", "model": "tiny",
                "managed": {"count": 1, "slots": 1, "model_path": str(model), "ctx": 256,
                            "threads": 1},
                **pool,
            }],
        }  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, join: str, token_file: Path, *extra: str, watch: bool = False) -> None:
        """Start the agent; `watch`: its log is read through `wait_log` (else a file)."""
        (self.dir / "node.yaml").write_text(yaml.safe_dump(self.node))
        self.proc = await asyncio.create_subprocess_exec(
            BIN / "pool-managerd", "serve", "--config", str(self.dir / "node.yaml"),
            "--join", join, "--token-file", str(token_file), *extra,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if watch else self.log.open("ab"),
            preexec_fn=die_with_parent,  # never outlives a killed test run
        )  # fmt: skip

    async def wait_log(self, needle: str) -> str:
        """Read the agent's log (started with `watch`) until a line with `needle`."""
        assert self.proc is not None and self.proc.stderr is not None
        async with asyncio.timeout(60):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                assert line, f"the agent exited before logging {needle!r}"
                if needle in line:
                    return line

    def engine_pids(self) -> list[int]:
        """The llama-server processes this agent spawned (its children)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 30)


async def process_gone(pid: int) -> None:
    """Return when process `pid` (any, not only a child) has exited: its pidfd turns
    readable (Linux 5.3+)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def hub_of(api: Api) -> AgentHub:
    service = api.daemon.service
    assert service is not None and service.remote is not None
    return service.remote.hub


def pool_of(api: Api, pool_id: str = "tiny") -> RemotePool:
    service = api.daemon.service
    assert service is not None and service.remote is not None
    return service.remote.pools[pool_id]


async def until(api: Api, predicate: Callable[[], bool], pool_id: str = "tiny") -> None:
    """Wait (bounded) until `predicate` holds, re-checked on every replica change."""
    async with asyncio.timeout(60):
        await pool_of(api, pool_id).wait_for(predicate)


def states(api: Api, pool_id: str = "tiny") -> dict[str, str]:
    return {r.id: r.state.value for r in pool_of(api, pool_id).replicas}


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[Callable[..., AgentProcess]]:
    made: list[AgentProcess] = []

    def make(agent_id: str, model: Path, **pool: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path, agent_id, model, **pool)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.stop()


def join_url(api: Api, scheme: str = "grpc") -> str:
    return f"{scheme}://127.0.0.1:{api.daemon.agents_port}"
