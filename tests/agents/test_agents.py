"""Agents on engine hosts: real `pool-managerd serve` processes, real llama-servers, a real
orchestratord (in this process) — joined over gRPC on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from orchestratord.service.admission import Submission
from pool_managerd.launchers import free_port
from tests.agents.conftest import (
    agents_server,
    hub_of,
    join_url,
    pool_of,
    process_gone,
    remote_pool,
    states,
    until,
)
from tests.helpers import orchctl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci"))

import metrics_lint


async def reloaded(api):
    """The pool's latest reload, settled (succeeded or rolled back)."""
    task = api.daemon.service.pools["tiny"].reload_task
    assert task is not None
    await task


async def long_streams(start_daemon, token_file):
    """A daemon with one remote pool whose streams run to max_tokens (a random model ends
    whenever it likes otherwise)."""
    return await start_daemon(
        remote_pool(engine_params={"ignore_eos": True}), ready=False,
        agents=agents_server(token_file),
    )  # fmt: skip


def all_ready(api, n):
    return lambda: len(states(api)) == n and set(states(api).values()) == {"ready"}


async def test_two_agents_serve_one_pool_and_a_killed_agent_takes_its_engine_along(
    start_daemon, agents, tiny_model, token_file
):
    """OC-AGENT-1601, OC-AGENT-1603, OC-AGENT-1604, OC-AGENT-1605, OC-AGENT-1608"""
    api = await long_streams(start_daemon, token_file)
    gpu_a, gpu_b = agents("gpu-a", tiny_model), agents("gpu-b", tiny_model)
    await gpu_a.start(join_url(api), token_file)
    # gpu-b is given a dead control-plane address first: it tries the next one
    await gpu_b.start(f"grpc://127.0.0.1:{free_port()}", token_file, "--join", join_url(api))
    await until(api, all_ready(api, 2))
    assert sorted(states(api)) == ["tiny-r0@gpu-a", "tiny-r0@gpu-b"]
    # one slot each: two tasks admitted at once run on both agents' engines (at once: in one
    # loop pass, so neither engine can have finished the first when the second is placed)
    running = await asyncio.gather(*(
        api.daemon.service.submit(
            Submission(model="tiny", tenant="default", correlation_id=f"c{i}", prompt=f"p{i}",
                       max_tokens=24)
        ) for i in range(2)
    ))  # fmt: skip
    served = {(await api.wait_state(rec.task.id, "completed"))["replica_id"] for rec in running}
    assert served == {"tiny-r0@gpu-a", "tiny-r0@gpu-b"}

    code, out, _ = await orchctl(api.base, "pools")
    assert code == 0 and "tiny-r0@gpu-a(ready 1/1 on gpu-a.test)" in out
    code, out, _ = await orchctl(api.base, "agents", "--json")
    listed = {a["agent_id"]: a for a in json.loads(out)}
    assert listed["gpu-a"]["connected"] and listed["gpu-a"]["host"] == "gpu-a.test"
    assert listed["gpu-b"]["replicas"] == {"ready": 1} and listed["gpu-b"]["pools"] == ["tiny"]

    engine = gpu_a.engine_pids()
    assert len(engine) == 1
    gpu_a.signal(signal.SIGKILL)
    await asyncio.wait_for(process_gone(engine[0]), 30)  # the engine died with its agent
    await until(api, lambda: states(api)["tiny-r0@gpu-a"] == "unready")
    assert "agent gpu-a lost" in (pool_of(api).get("tiny-r0@gpu-a").last_error or "")
    # queued work goes to the agent that is still there
    queued = [(await api.submit(model="tiny", prompt=f"q{i}", max_tokens=4))[1] for i in range(3)]
    for task in queued:
        assert (await api.wait_state(task["task_id"], "completed"))["replica_id"] == (
            "tiny-r0@gpu-b"
        )
    _, scrape = await api.get("/metrics")
    assert metrics_lint.lint(scrape, json.loads(metrics_lint.LINT.read_text())) == []
    assert 'agent_connected{agent_id="gpu-a"} 0.0' in scrape
    assert 'agent_replicas{agent_id="gpu-b",state="ready"} 1.0' in scrape
    assert 'agent_heartbeat_age_seconds{agent_id="gpu-b"}' in scrape

    await gpu_a.start(join_url(api), token_file)  # restarts, rejoins, serves again
    await until(api, all_ready(api, 2))
    _, pinned, _ = await api.submit(
        model="tiny", prompt="back", max_tokens=4,
        placement={"mode": "pin", "replica_id": "tiny-r0@gpu-a"},
    )  # fmt: skip
    assert (await api.wait_state(pinned["task_id"], "completed"))["replica_id"] == "tiny-r0@gpu-a"


async def test_a_stream_cut_by_a_dying_agent_ends_worker_reset_and_queued_work_waits_for_it(
    start_daemon, agents, slow_model, token_file
):
    """OC-AGENT-1604"""
    api = await long_streams(start_daemon, token_file)
    agent = agents("gpu-a", slow_model)
    agent.node["pools"][0]["managed"]["ctx"] = 2048  # ~13 s of tokens for the long task
    await agent.start(join_url(api), token_file)
    await until(api, all_ready(api, 1))
    _, long, _ = await api.submit(model="tiny", prompt="long", max_tokens=2000)
    _, queued, _ = await api.submit(model="tiny", prompt="queued", max_tokens=4)
    await api.events(long["task_id"], until="token")  # it has streamed a token
    agent.signal(signal.SIGKILL)
    events = await api.events(long["task_id"])
    assert events[-1][0] == "error" and events[-1][2]["code"] == "WORKER_RESET"
    assert (await api.status(queued["task_id"]))["state"] == "queued"  # nowhere to run yet
    await agent.start(join_url(api), token_file)
    assert (await api.wait_state(queued["task_id"], "completed"))["replica_id"] == ("tiny-r0@gpu-a")


async def test_an_agent_that_stops_beating_goes_unready_and_comes_back(
    start_daemon, agents, tiny_model, token_file
):
    """OC-AGENT-1604"""
    api = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file))
    agent = agents("gpu-a", tiny_model)
    await agent.start(join_url(api), token_file)
    await until(api, all_ready(api, 1))
    agent.signal(signal.SIGSTOP)  # alive, connection open, silent: only heartbeats tell
    try:
        await until(api, lambda: states(api)["tiny-r0@gpu-a"] == "unready")
        reason = pool_of(api).get("tiny-r0@gpu-a").last_error or ""
        assert "heartbeats missed" in reason, reason
    finally:
        agent.signal(signal.SIGCONT)
    await until(api, all_ready(api, 1))  # it reconnects and registers again
    _, task, _ = await api.submit(model="tiny", prompt="again", max_tokens=4)
    assert (await api.wait_state(task["task_id"], "completed"))["replica_id"] == "tiny-r0@gpu-a"


async def test_drain_resume_reload_and_stop_travel_to_the_agent_with_their_results(
    start_daemon, agents, tiny_model, tiny_model_b, token_file
):
    """OC-AGENT-1606"""
    api = await start_daemon(
        remote_pool(models={"tiny-b": "tiny-b", "broken": "broken"}), ready=False,
        agents=agents_server(token_file),
    )  # fmt: skip
    agent = agents(
        "gpu-a", tiny_model, models={"tiny-b": str(tiny_model_b), "broken": "/nonexistent.gguf"}
    )
    await agent.start(join_url(api), token_file)
    await until(api, all_ready(api, 1))
    hub = hub_of(api)

    def last(action):
        return lambda: (hub.agents["gpu-a"].last_command or ("", "", ""))[1] == action

    assert (await orchctl(api.base, "drain", "tiny"))[0] == 0
    async with asyncio.timeout(30):
        await hub.changes.wait_for(last("drain"))
    assert hub.agents["gpu-a"].last_command == ("tiny", "drain", None)
    assert states(api) == {"tiny-r0@gpu-a": "draining"}
    assert (await orchctl(api.base, "resume", "tiny"))[0] == 0
    async with asyncio.timeout(30):
        await hub.changes.wait_for(last("resume"))
    assert states(api) == {"tiny-r0@gpu-a": "ready"}
    old_digest = pool_of(api).get("tiny-r0@gpu-a").model_digest

    code, _, err = await orchctl(api.base, "reload", "tiny", "tiny-b")
    assert code == 0, err
    await asyncio.wait_for(reloaded(api), 60)
    # the agent started a replica on the new model, switched over and retired the old one
    assert hub.agents["gpu-a"].last_command == ("tiny", "reload", None)
    await until(api, lambda: states(api) == {"tiny-r1@gpu-a": "ready"})
    new = pool_of(api).get("tiny-r1@gpu-a")
    assert new.model_digest and new.model_digest != old_digest
    _, task, _ = await api.submit(model="tiny", prompt="new model", max_tokens=4)
    assert (await api.wait_state(task["task_id"], "completed"))["replica_id"] == "tiny-r1@gpu-a"

    assert (await orchctl(api.base, "reload", "tiny", "broken"))[0] == 0
    await asyncio.wait_for(reloaded(api), 60)
    info = (await api.get("/v1/pools/tiny"))[1]
    assert "gpu-a" in info["last_error"] and "rolled back" in info["last_error"]
    assert hub.agents["gpu-a"].last_command[1:] == ("reload", info["last_error"].split(": ", 1)[1])
    assert states(api) == {"tiny-r1@gpu-a": "ready"}  # the old replica kept serving

    engines = agent.engine_pids()
    code, out, err = await orchctl(api.base, "agents", "stop", "gpu-a")
    assert code == 0, err
    async with asyncio.timeout(30):
        await hub.changes.wait_for(last("stop"))
    assert hub.agents["gpu-a"].last_command == ("tiny", "stop", None)
    await until(api, lambda: states(api) == {})  # its replicas left the pool
    for pid in engines:
        await asyncio.wait_for(process_gone(pid), 30)
    assert hub.agents["gpu-a"].connected
    code, out, _ = await orchctl(api.base, "agents")
    assert code == 0 and "gpu-a" in out and "last command: stop tiny: ok" in out
    code, _, err = await orchctl(api.base, "agents", "stop", "nobody")
    assert code != 0 and "no agent 'nobody'" in err


async def test_a_restarted_control_plane_gets_the_agent_back_without_duplicates(
    start_daemon, agents, tiny_model, token_file
):
    """OC-AGENT-1607"""
    port = free_port()
    first = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file, port))
    agent = agents("gpu-a", tiny_model)
    await agent.start(join_url(first), token_file)
    await until(first, all_ready(first, 1))
    engine = agent.engine_pids()
    await first.daemon.stop(grace_s=0)

    second = await start_daemon(remote_pool(), ready=False, agents=agents_server(token_file, port))
    await until(second, all_ready(second, 1))
    assert list(states(second)) == ["tiny-r0@gpu-a"]
    assert agent.engine_pids() == engine  # the engine kept running through it
    _, task, _ = await second.submit(model="tiny", prompt="hi", max_tokens=4)
    assert (await second.wait_state(task["task_id"], "completed"))["replica_id"] == (
        "tiny-r0@gpu-a"
    )
