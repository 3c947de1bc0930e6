"""The llama.cpp adapter and pool_managerd against real llama-server processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator_core.errors import ErrorCode
from pool_managerd.launchers import LlamaServerLauncher, LlamaServerOptions
from pool_managerd.probe import poll_until
from pool_managerd.tiny_gguf import EOS_ID
from tests.engines.conftest import LONG_STREAMS, llama_pool
from worker_adapters.base import AdapterError, End, GenerateRequest, Token
from worker_adapters.llamacpp_http import model_digest

pytestmark = pytest.mark.llamacpp


@pytest.fixture
async def engine(tiny_model):
    """One llama-server with 2 slots, started by the real launcher."""
    launcher = LlamaServerLauncher(LlamaServerOptions(slots=2, ctx=512, threads=1))
    launched = await launcher.launch("t-r0", str(tiny_model))
    try:
        async with asyncio.timeout(60):
            await poll_until(launched.adapter.ready)
        yield launched
    finally:
        await launched.stop()


async def slots_idle(adapter) -> bool:
    return await adapter.busy_slots() == 0


async def collect(adapter, request):
    events = [e async for e in adapter.stream(request)]
    return events


async def test_loads_generated_model_and_reports_capabilities(engine, tiny_model):
    """OC-POOL-4001, OC-ADAPT-3001"""
    caps = await engine.adapter.capabilities()
    assert caps.engine == "llamacpp" and caps.slots == 2 and caps.ctx_per_slot == 256
    assert caps.engine_version.startswith("llama.cpp 0.")
    assert caps.model_digest == model_digest(tiny_model)


async def test_stream_is_complete_with_engine_token_counts(engine):
    """OC-ADAPT-3002"""
    events = await collect(engine.adapter, GenerateRequest("hello", max_tokens=12, seed=3))
    tokens = [e for e in events if isinstance(e, Token)]
    end = events[-1]
    assert isinstance(end, End) and end.finish_reason == "length" and end.tokens_out == 12
    assert 0 < sum(t.count for t in tokens) <= 12 and end.tokens_in and end.tokens_in > 0
    assert all(t.text for t in tokens)
    # an immediate end of sequence finishes with `stop`
    engine.adapter.extra_params = {"logit_bias": [[EOS_ID, 100.0]]}
    events = await collect(engine.adapter, GenerateRequest("hello", max_tokens=12, seed=3))
    assert isinstance(events[-1], End) and events[-1].finish_reason == "stop"
    assert events[-1].tokens_out <= 1  # llama.cpp counts the end-of-sequence token


async def test_same_seed_same_tokens(engine):
    """OC-ADAPT-3003"""
    req = GenerateRequest("determinism", max_tokens=24, seed=42, cache_prompt=False)
    first = await collect(engine.adapter, req)
    second = await collect(engine.adapter, req)
    text = lambda evs: [(e.text, e.ids) for e in evs if isinstance(e, Token)]  # noqa: E731
    assert text(first) == text(second) and len(text(first)) > 0


async def test_invalid_params_carry_the_engine_message(engine):
    """OC-ADAPT-3004"""
    engine.adapter.extra_params = {"n_probs": "many"}
    with pytest.raises(AdapterError) as err:
        await collect(engine.adapter, GenerateRequest("x", max_tokens=2))
    assert err.value.code is ErrorCode.INVALID_PARAMS and "400" in err.value.message


async def test_cancel_closes_the_connection_and_frees_the_slot(slow_model):
    """OC-ADAPT-3005"""
    launcher = LlamaServerLauncher(LlamaServerOptions(slots=1, ctx=2048, threads=1))
    launched = await launcher.launch("s-r0", str(slow_model))
    try:
        async with asyncio.timeout(60):
            await poll_until(launched.adapter.ready)
        adapter = launched.adapter
        stream = adapter.stream(GenerateRequest("cancel me", max_tokens=1500, seed=1))
        seen = 0
        async for event in stream:
            seen += isinstance(event, Token)
            if seen == 3:
                break
        assert await adapter.busy_slots() == 1
        await stream.aclose()  # what the daemon's cancel does
        async with asyncio.timeout(5):  # the engine notices the closed socket promptly
            await poll_until(lambda: slots_idle(adapter))
    finally:
        await launched.stop()


async def test_dead_engine_maps_to_worker_reset(tiny_model):
    """OC-ADAPT-3006"""
    launcher = LlamaServerLauncher(LlamaServerOptions(slots=1))
    launched = await launcher.launch("d-r0", str(tiny_model))
    await launched.stop()
    with pytest.raises(AdapterError) as err:
        await collect(
            launched.adapter.__class__(launched.endpoint), GenerateRequest("x", max_tokens=2)
        )
    assert err.value.code is ErrorCode.WORKER_RESET and err.value.retriable


async def test_daemon_streams_real_tokens_end_to_end(start_daemon, tiny_model):
    """OC-POOL-4002"""
    api = await start_daemon(llama_pool(tiny_model))
    _, task, _ = await api.submit(model="llama-model", prompt="hello", max_tokens=16, seed=9)
    events = await api.events(task["task_id"])
    assert events[0][0] == "started" and events[-1][0] == "end"
    assert events[0][2]["engine"] == "llamacpp"
    assert events[-1][2]["tokens_out"] == 16 and events[-1][2]["finish_reason"] == "length"
    # the engine's token ids travel with the text (byte tokens: ids 3..258)
    assert all(3 <= i <= 258 for e in events if e[0] == "token" for i in e[2]["ids"])
    status = await api.status(task["task_id"])
    assert status["output"] == "".join(e[2]["t"] for e in events if e[0] == "token")
    _, pool = await api.get("/v1/pools/llama")
    replica = pool["replicas"][0]
    assert replica["state"] == "ready" and replica["slots_total"] == 2
    assert replica["model_digest"] == model_digest(tiny_model)


async def test_strict_same_seed_identical_on_either_replica(start_daemon, tiny_model):
    """OC-POOL-4003"""
    api = await start_daemon(
        llama_pool(tiny_model, determinism="strict", replicas={"managed": {"count": 2}})
    )
    _, pool = await api.get("/v1/pools/llama")
    assert [r["slots_total"] for r in pool["replicas"]] == [1, 1]
    outputs = []
    for replica in ("llama-r0", "llama-r1", "llama-r0"):
        _, task, _ = await api.submit(
            model="llama-model",
            prompt="same seed",
            max_tokens=32,
            seed=1234,
            determinism="strict",
            placement={"mode": "pin", "replica_id": replica},
        )
        events = await api.events(task["task_id"])
        assert events[0][2]["replica_id"] == replica
        outputs.append([e[2]["t"] for e in events if e[0] == "token"])
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0]
    # a strict task without a seed gets one, reported in `started`
    _, task, _ = await api.submit(
        model="llama-model", prompt="x", max_tokens=2, determinism="strict"
    )
    started = (await api.events(task["task_id"]))[0][2]
    assert isinstance(started["seed"], int)


async def test_cancel_through_the_daemon_frees_the_engine_slot(start_daemon, slow_model):
    """OC-POOL-4004"""
    api = await start_daemon(
        llama_pool(slow_model, replicas={"managed": {"slots": 1, "ctx": 2048}}, **LONG_STREAMS)
    )
    _, task, _ = await api.submit(model="llama-model", prompt="long", max_tokens=1500)
    tid = task["task_id"]
    async with api.http.get(f"{api.base}/v1/tasks/{tid}/stream") as r:
        async for line in r.content:
            if line.startswith(b"event: token"):
                break
    replica = api.daemon.service.pools["llama"].manager.replicas[0]
    assert await replica.adapter.busy_slots() == 1
    assert await api.cancel(tid) == 204
    async with asyncio.timeout(5):
        await poll_until(lambda: slots_idle(replica.adapter))
    assert replica.busy == 0


async def wait_replica(api, pool_id: str, replica_id: str, states: set[str]) -> dict:
    service = api.daemon.service
    manager = service.pools[pool_id].manager

    def reached() -> bool:
        replica = manager.get(replica_id)
        return replica is not None and replica.state.value in states

    async with asyncio.timeout(60):
        await manager.wait_for(reached)
    return manager.get(replica_id)


async def test_kill9_replica_mid_stream(start_daemon, slow_model):
    """OC-POOL-4005"""
    api = await start_daemon(
        llama_pool(
            slow_model,
            replicas={"managed": {"count": 2, "slots": 2, "ctx": 4096}},
            max_retries=2,
            restart_backoff_s=0.05,
            **LONG_STREAMS,
        )
    )
    service = api.daemon.service
    manager = service.pools["llama"].manager
    # A streams tokens on r0
    _, a, _ = await api.submit(
        model="llama-model",
        prompt="streaming",
        max_tokens=1500,
        placement={"mode": "pin", "replica_id": "llama-r0"},
    )
    async with api.http.get(f"{api.base}/v1/tasks/{a['task_id']}/stream") as r:
        async for line in r.content:
            if line.startswith(b"event: token"):
                break
    # B is dispatched to r0 with a long prompt: no token yet when r0 dies
    _, b, _ = await api.submit(
        model="llama-model",
        prompt="x" * 1800,
        max_tokens=4,
        placement={"mode": "prefer", "replica_id": "llama-r0"},
    )
    await api.events(b["task_id"], until="started")
    os.kill(manager.get("llama-r0").pid, signal.SIGKILL)
    a_events = await api.events(a["task_id"])
    assert a_events[-1][0] == "error" and a_events[-1][2]["code"] == "WORKER_RESET"
    assert a_events[-1][2]["retriable"] is True
    b_events = await api.events(b["task_id"])
    starts = [e[2]["replica_id"] for e in b_events if e[0] == "started"]
    assert starts[0] == "llama-r0" and starts[-1] == "llama-r1"
    assert b_events[-1][0] == "end" and b_events[-1][2]["tokens_out"] == 4
    tokens = [e[2]["i"] for e in b_events if e[0] == "token"]
    assert tokens == sorted(set(tokens))  # never a duplicate token
    replica = await wait_replica(api, "llama", "llama-r0", {"ready"})
    assert replica.restarts >= 1


async def test_crash_looping_replica_ends_failed_with_last_error(start_daemon, tmp_path):
    """OC-POOL-4006"""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF but not really a model")
    api = await start_daemon(llama_pool(bad, max_restarts=2, restart_backoff_s=0.01), ready=False)
    await wait_replica(api, "llama", "llama-r0", {"failed"})
    _, pool = await api.get("/v1/pools/llama")
    replica = pool["replicas"][0]
    assert replica["state"] == "failed" and replica["restarts"] == 2
    assert "exited" in replica["last_error"] or "load" in replica["last_error"]
    assert pool["last_error"]
    _, err, _ = await api.submit(expect=503, model="llama-model", prompt="x")
    assert err["code"] == "POOL_UNAVAILABLE"
    _, metrics = await api.get("/metrics")
    assert 'replica_restarts_total{pool_id="llama",replica_id="llama-r0"} 2.0' in metrics


async def test_drain_and_reload_with_rollback(start_daemon, tiny_model, tiny_model_b, tmp_path):
    """OC-POOL-4007"""
    api = await start_daemon(llama_pool(tiny_model))
    service = api.daemon.service
    pool = service.pools["llama"]
    await pool.reload(str(tmp_path / "missing.gguf"))
    _, info = await api.get("/v1/pools/llama")
    assert [r["replica_id"] for r in info["replicas"]] == ["llama-r0"]
    assert "rolled back" in info["last_error"] and "missing.gguf" in info["last_error"]
    await pool.reload(str(tiny_model_b))
    _, info = await api.get("/v1/pools/llama")
    ready = [r for r in info["replicas"] if r["state"] == "ready"]
    assert [r["model_digest"] for r in ready] == [model_digest(tiny_model_b)]
    _, task, _ = await api.submit(model="llama-model", prompt="after reload", max_tokens=3)
    assert (await api.events(task["task_id"]))[-1][0] == "end"
    async with api.http.post(f"{api.base}/v1/pools/llama/drain", json={"deadline_ms": 1}) as r:
        assert r.status == 202
    await api.submit(expect=503, model="llama-model", prompt="x")


async def test_no_llama_server_survives_the_daemon(start_daemon, tiny_model):
    """OC-POOL-4008"""
    api = await start_daemon(llama_pool(tiny_model, replicas={"managed": {"count": 2}}))
    manager = api.daemon.service.pools["llama"].manager
    pids = [r.pid for r in manager.replicas]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    await api.daemon.stop(grace_s=0)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        # a zombie still answers; check its state
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


async def test_attach_mode_probes_an_external_engine(start_daemon, engine):
    """OC-POOL-4009"""
    pool = {
        "id": "ext",
        "engine": "llamacpp",
        "model": "ext-model",
        "replicas": {"endpoints": [engine.endpoint]},
    }
    api = await start_daemon(pool)
    _, info = await api.get("/v1/pools/ext")
    assert info["replicas"][0]["endpoint"] == engine.endpoint
    assert info["replicas"][0]["slots_total"] == 2  # as the engine reports
    _, task, _ = await api.submit(model="ext-model", prompt="attached", max_tokens=4)
    assert (await api.events(task["task_id"]))[-1][0] == "end"


async def test_engine_reported_load_feeds_gauges(start_daemon, slow_model):
    """OC-POOL-4010"""
    api = await start_daemon(
        llama_pool(
            slow_model,
            health_interval_s=0.05,
            replicas={"managed": {"slots": 1, "ctx": 2048}},
            **LONG_STREAMS,
        )
    )
    manager = api.daemon.service.pools["llama"].manager
    _, task, _ = await api.submit(model="llama-model", prompt="busy", max_tokens=1500)
    await api.events(task["task_id"], until="token")
    async with asyncio.timeout(10):  # the engine's own /slots says one request is processing
        await manager.wait_for(lambda: manager.replicas[0].engine_busy == 1)
    _, metrics = await api.get("/metrics")
    assert 'replica_engine_busy{pool_id="llama",replica_id="llama-r0"} 1.0' in metrics
    await api.cancel(task["task_id"])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


async def test_no_llama_server_survives_a_sigkilled_daemon(tiny_model, tmp_path):
    """OC-POOL-4008"""
    config = {
        "server": {"port": 0},
        "pools": [llama_pool(tiny_model, replicas={"managed": {"count": 2}})],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    daemon = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "orchestratord",
        "serve",
        "--config",
        str(tmp_path / "c.yaml"),
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
    )
    assert daemon.stderr is not None
    ready = 0
    async with asyncio.timeout(60):
        while ready < 2:
            line = await daemon.stderr.readline()
            assert line, "daemon exited"
            ready += b'"replica ready"' in line
    engines = _children(daemon.pid)
    assert len(engines) == 2 and all(_alive(p) for p in engines)
    daemon.kill()  # SIGKILL: no shutdown code runs in the daemon
    await daemon.wait()

    async def all_gone() -> bool:
        return not any(_alive(p) for p in engines)

    async with asyncio.timeout(10):
        await poll_until(all_gone)  # the kernel's parent-death signal, not our cleanup


async def test_a_strict_stream_resumes_byte_identical_after_sigkill(served, tiny_model):
    """OC-STORE-1003: a real llama-server, the daemon SIGKILLed mid-stream (its engine dies
    with it), a new daemon and engine: the stream resumes exactly after the last event."""
    pool = llama_pool(tiny_model, determinism="strict", replicas={"managed": {"ctx": 1024}})
    pool.update(LONG_STREAMS)
    task = {"model": "llama-model", "prompt": "resume", "max_tokens": 160, "seed": 11}
    await served.start(pool)
    tid = (await served.submit(**task))["task_id"]
    before = await served.events(tid, tokens=90)
    await served.kill()
    await served.start(pool)
    resumed = await served.events(tid, after=before[-1][1])
    reference = await served.events((await served.submit(**task))["task_id"])

    def tokens(events):
        return [e for e in events if e[0] == "token"]

    assert tokens(before + resumed) == tokens(reference)  # ids, texts and token ids
    assert resumed[-1][0] == reference[-1][0] == "end"
    assert json.loads(resumed[-1][2])["tokens_out"] == 160


async def test_a_finished_stream_resumes_byte_identical_after_sigkill(served, tiny_model):
    """OC-STORE-1004: a finished task's stream is rebuilt from the journal with the
    engine's token ids, exactly as it was sent."""
    pool = llama_pool(tiny_model, replicas={"managed": {"ctx": 1024}})
    pool.update(LONG_STREAMS)
    await served.start(pool)
    tid = (await served.submit(model="llama-model", prompt="kept", max_tokens=48))["task_id"]
    events = await served.events(tid)
    assert events[-1][0] == "end" and '"ids":[' in events[1][2]
    await served.kill()
    await served.start(pool)
    assert await served.events(tid, after=20) == events[21:]
