"""A remote pool's bookkeeping, without the network: what agents report becomes replicas;
the node config; GPUs; the generated protocol code."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pool_managerd import yaml_config
from pool_managerd.gpu import nvml_available, read_gpus
from pool_managerd.node_config import NodeConfig
from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.remote_pool import CommandFailed, RemotePool
from pool_managerd.replica import ReplicaEvent
from pool_managerd.replica_set import ReloadFailed
from worker_adapters.llamacpp_http import LlamaCppAdapter

ROOT = Path(__file__).resolve().parents[2]


class Link:
    """An agent as the pool sees it; records commands, answers with `error`."""

    def __init__(self, agent_id: str, error: str | None = None) -> None:
        self.agent_id, self.host, self.error = agent_id, f"{agent_id}.test", error
        self.sent: list[str] = []
        self.received = asyncio.Event()

    async def command(self, command: pb.Command) -> None:
        self.sent.append(command.WhichOneof("action"))
        self.received.set()
        if self.error:
            raise CommandFailed(self.error)


def update(rid: str, state: int, restarts: int = 0) -> pb.ReplicaUpdate:
    return pb.ReplicaUpdate(
        pool_id="tiny", replica_id=rid, state=state, endpoint="http://127.0.0.1:9",
        slots=2, ctx_per_slot=128, engine_version="v", model_digest="d", restarts=restarts,
    )  # fmt: skip


def make_pool() -> tuple[RemotePool, list[tuple[str, ReplicaEvent]]]:
    events: list[tuple[str, ReplicaEvent]] = []
    pool = RemotePool(
        "tiny", "llamacpp", "tiny", False, LlamaCppAdapter,
        lambda replica, event: events.append((replica.id, event)), agents=["a", "b"],
    )  # fmt: skip
    return pool, events


async def test_what_agents_report_becomes_replicas_and_a_rejoin_replaces_not_duplicates():
    """OC-AGENT-1603, OC-AGENT-1607"""
    pool, events = make_pool()
    a = Link("a")
    pool.joined(a, [update("tiny-r0", pb.REPLICA_STATE_READY),
                    update("tiny-r1", pb.REPLICA_STATE_STARTING)])  # fmt: skip
    r0 = pool.get("tiny-r0@a")
    assert r0 is not None and r0.state == "ready" and r0.slots_total == 2
    assert (r0.host, r0.agent_id, r0.ctx_per_slot) == ("a.test", "a", 128)
    assert pool.get("tiny-r1@a").state == "starting"
    lease = pool.lease("tiny-r0@a")

    pool.lost("a", "agent a lost: the connection closed")
    assert [r.state for r in pool.replicas] == ["unready", "unready"]
    assert ("tiny-r0@a", ReplicaEvent.DOWN) in events
    pool.release(lease)

    # it comes back after a restart: r1 is gone, r0 is the same replica, not a second one
    pool.joined(a, [update("tiny-r0", pb.REPLICA_STATE_READY, restarts=1)])
    assert [r.id for r in pool.replicas] == ["tiny-r0@a"]
    assert pool.get("tiny-r0@a") is r0 and r0.state == "ready" and r0.restarts == 1
    assert ("tiny-r1@a", ReplicaEvent.REMOVED) in events

    pool.apply(a, update("tiny-r0", pb.REPLICA_STATE_FAILED))
    assert r0.state == "failed" and events[-1] == ("tiny-r0@a", ReplicaEvent.FAILED)
    pool.apply(a, update("tiny-r0", pb.REPLICA_STATE_STOPPED))
    assert pool.replicas == []
    pool.joined(a, [update("tiny-r0", pb.REPLICA_STATE_READY)])
    pool.forget("a")
    assert pool.replicas == [] and events[-1] == ("tiny-r0@a", ReplicaEvent.REMOVED)


async def test_drain_holds_leases_here_at_once_and_reaches_agents_that_rejoin():
    """OC-AGENT-1606"""
    pool, _ = make_pool()
    a = Link("a")
    pool.joined(a, [update("tiny-r0", pb.REPLICA_STATE_READY)])
    pool.drain()
    assert pool.get("tiny-r0@a").state == "draining"
    with pytest.raises(RuntimeError):
        pool.lease("tiny-r0@a")
    b = Link("b")
    pool.joined(b, [update("tiny-r0", pb.REPLICA_STATE_READY)])  # joined while drained
    assert pool.get("tiny-r0@b").state == "draining"
    async with asyncio.timeout(10):
        await a.received.wait()
        await b.received.wait()
    assert a.sent == ["drain"] and b.sent == ["drain"]
    pool.resume()
    assert {r.state for r in pool.replicas} == {"ready"}


async def test_a_reload_fails_naming_each_agent_that_could_not():
    """OC-AGENT-1606"""
    pool, _ = make_pool()
    with pytest.raises(ReloadFailed, match="no agent serving pool 'tiny' is connected"):
        await pool.reload("tiny-b")
    pool.joined(Link("a"), [])
    pool.joined(Link("b", error="model file not found"), [])
    with pytest.raises(ReloadFailed, match="b: model file not found") as e:
        await pool.reload("tiny-b")
    assert "a:" not in str(e.value) and pool.last_error == str(e.value)
    assert pool.model == "tiny"


def test_node_config_is_validated_naming_each_key(tmp_path):
    """OC-AGENT-1602"""
    path = tmp_path / "node.yaml"
    path.write_text(
        "agent: {id: 'bad id', engine_host: 0.0.0.0}\n"
        "pools:\n"
        "  - {id: p, engine: tgi, model: m, managed: {model_path: /m.gguf}}\n"
        "  - {id: q, engine: llamacpp, model: m, managed: {}}\n"
    )
    with pytest.raises(yaml_config.ConfigError) as e:
        yaml_config.load(NodeConfig, path)
    text = str(e.value)
    assert "agent.id" in text and "agent.engine_host" in text and "wildcard" in text
    assert "pools[0]" in text and "cannot be managed" in text
    assert "pools[1]" in text and "model_path" in text


def test_gpus_are_read_through_nvml_where_present_and_absent_is_not_an_error():
    """OC-AGENT-1605"""
    gpus = read_gpus()
    if nvml_available():  # an NVIDIA host: every device, with sane figures
        assert gpus and all(g.memory_total_bytes > 0 and 0 <= g.utilization_percent <= 100
                            for g in gpus)  # fmt: skip
    else:
        assert gpus == []


def test_generated_protocol_code_is_diff_clean_and_every_message_is_commented():
    """OC-AGENT-1601"""
    check = subprocess.run(
        [sys.executable, "ci/regen_proto.py", "--check"], cwd=ROOT, capture_output=True,
        text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout
    lines = (ROOT / "contracts/proto/pool_manager.proto").read_text().splitlines()
    declared = [i for i, line in enumerate(lines) if re.match(r"(message|enum|service) \w+", line)]
    d = pb.DESCRIPTOR
    assert len(declared) == (
        len(d.message_types_by_name) + len(d.enum_types_by_name) + len(d.services_by_name)
    )
    for i in declared:
        assert lines[i - 1].startswith("//"), f"no comment above: {lines[i]}"
