"""Where the core meets configuration, headers and the engines (issue 19): each test fails
if that wiring is broken, through the HTTP API."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import yaml

from tests.helpers import Served, mock_pool, start_serve, wait_log
from worker_adapters.mock import MockAdapter


async def test_tenant_weights_and_header_reach_the_dispatch_order(start_daemon, monkeypatch):
    """OC-CORE-1026: dropping `queue.tenant_weights` where the pool's queue is built, or
    ignoring `X-Tenant-Id`, left every daemon test green."""
    seen: list[str] = []  # prompts in the order the engine received them
    stream = MockAdapter.stream

    def recorded(self, request):
        seen.append(request.prompt)
        return stream(self, request)

    monkeypatch.setattr(MockAdapter, "stream", recorded)
    api = await start_daemon(
        mock_pool(
            queue={"capacity": 64, "tenant_weights": {"heavy": 3}},
            replicas={"managed": {"count": 1, "slots": 1}},
        )
    )
    _, hold, _ = await api.submit(model="mock-model", prompt="[[stall:0]] hold the slot")
    await api.wait_state(hold["task_id"], "running")
    for _ in range(8):  # queued behind the held slot, alternating
        for tenant in ("light", "heavy"):
            body = {"model": "mock-model", "prompt": tenant, "max_tokens": 1}
            headers = {"X-Tenant-Id": tenant}
            async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=headers) as r:
                assert r.status == 202
    assert await api.cancel(hold["task_id"]) == 204
    await api.daemon.service.pools["mock"].wait_idle()
    first = seen[1:9]  # after the held task
    # 3:1 — of the first 8 dispatches, 6 are heavy's (equal weights, or one tenant: 4)
    assert first.count("heavy") == 6, first


async def test_reload_lets_running_tasks_finish_on_the_old_replica(start_daemon):
    """OC-CTRL-2022: retiring the old replicas at once (killing a llama-server mid-task)
    passed, as did a reload that changed nothing."""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 2}}))
    manager = api.daemon.service.pools["mock"].manager
    (old,) = manager.replicas
    _, running, _ = await api.submit(model="mock-model", prompt="[[stall:2]] busy")
    await api.wait_state(running["task_id"], "running")
    await api.daemon.service.pools["mock"].reload("mock-model-v2")
    (new,) = [r for r in manager.replicas if r is not old]
    assert new.state == "ready" and new.adapter is not old.adapter  # a new engine serves
    _, fresh, _ = await api.submit(model="mock-model", prompt="after", max_tokens=2)
    events = await api.events(fresh["task_id"])  # (time for a premature retirement to act)
    assert events[0][2]["replica_id"] == new.id and events[-1][0] == "end"
    assert (await api.status(running["task_id"]))["state"] == "running"  # not cut off
    assert old in manager.replicas and old.state == "draining"
    assert await api.cancel(running["task_id"]) == 204
    await manager.wait_for(lambda: old not in manager.replicas)


async def test_resume_exactly_at_inside_and_one_past_the_buffer_edge(start_daemon):
    """OC-CTRL-2009: an off-by-one in the gap check (resuming one event past the buffer
    silently lost one event and repeated another) passed."""
    api = await start_daemon(mock_pool(), stream_buffer_events=16)
    _, task, _ = await api.submit(model="mock-model", prompt="edge", max_tokens=200)
    tid = task["task_id"]
    await api.daemon.service.pools["mock"].wait_idle()
    # events 0..201; the last 16 (186..201) are retained
    at_edge = await api.events(tid, last_event_id=185)
    assert [e[1] for e in at_edge] == list(range(186, 202))
    inside = await api.events(tid, last_event_id=186)
    assert [e[1] for e in inside] == list(range(187, 202))
    url = f"{api.base}/v1/tasks/{tid}/stream"
    async with api.http.get(url, headers={"Last-Event-ID": "184"}) as r:
        assert r.status == 410 and (await r.json())["code"] == "STREAM_GAP"


async def test_a_finished_task_is_kept_for_its_retention(start_daemon):
    """OC-CTRL-2009: a retention 1,000 times shorter passed every test."""
    api = await start_daemon(mock_pool(), retention_s=300)
    _, task, _ = await api.submit(model="mock-model", prompt="kept", max_tokens=2)
    await api.events(task["task_id"])
    expiry = api.daemon.service.book._expiry
    assert expiry is not None
    left_s = expiry.when() - asyncio.get_running_loop().time()
    assert 60 < left_s <= 300  # (a loaded machine may take a while to get here)
    assert (await api.status(task["task_id"]))["state"] == "completed"


async def test_session_affinity_beats_the_less_busy_replica(start_daemon):
    """OC-CTRL-2018: the affinity test passed with affinity disabled — the replica-id
    tie-break picked the same replica anyway. Here the other replica is the less busy one."""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 2, "slots": 2}}))
    _, t1, _ = await api.submit(model="mock-model", prompt="turn 1", session_id="s1")
    warm = (await api.events(t1["task_id"]))[0][2]["replica_id"]
    pin = {"mode": "pin", "replica_id": warm}
    _, busy, _ = await api.submit(model="mock-model", prompt="[[stall:0]]", placement=pin)
    await api.wait_state(busy["task_id"], "running")  # the warm replica is now the busier one
    _, t2, _ = await api.submit(model="mock-model", prompt="turn 2", session_id="s1")
    assert (await api.events(t2["task_id"]))[0][2]["replica_id"] == warm
    _, other, _ = await api.submit(model="mock-model", prompt="no session", max_tokens=1)
    assert (await api.events(other["task_id"]))[0][2]["replica_id"] != warm  # (it would be)
    assert await api.cancel(busy["task_id"]) == 204


def _grace_config(tmp_path: Path, grace_s: float) -> Path:
    """A config: one single-slot mock pool and this grace period."""
    config = {
        "server": {"shutdown_grace_s": grace_s},
        "pools": [mock_pool(replicas={"managed": {"count": 1, "slots": 1}})],
    }
    tmp_path.mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "c.yaml"


async def _serving(tmp_path: Path, grace_s: float) -> tuple[asyncio.subprocess.Process, Served]:
    """A real `orchestratord serve` with that config."""
    proc, url = await start_serve(_grace_config(tmp_path, grace_s))
    daemon = Served(tmp_path, aiohttp.ClientSession())
    daemon.proc, daemon.url = proc, url
    return proc, daemon


async def test_sigterm_runs_queued_tasks_in_its_grace_and_ends_the_rest_typed(tmp_path):
    """OC-CTRL-2017"""
    # within the grace period, queued work still runs once a slot frees
    proc, daemon = await _serving(tmp_path / "a", 60)
    async with daemon.http:
        running = (await daemon.submit(model="mock-model", prompt="[[stall:0]]"))["task_id"]
        await daemon.events(running, until="started")
        queued = (await daemon.submit(model="mock-model", prompt="q", max_tokens=3))["task_id"]
        proc.send_signal(signal.SIGTERM)
        await wait_log(proc, "signal received")
        await daemon.submit(expect=503, model="mock-model", prompt="late")
        async with daemon.http.post(f"{daemon.url}/v1/tasks/{running}/cancel") as r:
            assert r.status == 204
        events = await daemon.events(queued)
        assert events[-1][0] == "end" and '"finish_reason":"length"' in events[-1][2]
        assert sum(e[0] == "token" for e in events) == 3
    assert await asyncio.wait_for(proc.wait(), 30) == 0

    # at its end, what is still queued or running ends with a typed, retriable error
    proc, daemon = await _serving(tmp_path / "b", 0)
    async with daemon.http:
        running = (await daemon.submit(model="mock-model", prompt="[[stall:0]]"))["task_id"]
        await daemon.events(running, until="started")
        queued = (await daemon.submit(model="mock-model", prompt="q", max_tokens=3))["task_id"]
        streams = [
            await daemon.http.get(f"{daemon.url}/v1/tasks/{task_id}/stream")
            for task_id in (running, queued)
        ]  # both streams are open (their heads arrived) before the signal
        proc.send_signal(signal.SIGTERM)
        for stream in streams:
            frames = [f for f in (await stream.text()).split("\n\n") if f.startswith("event:")]
            last = dict(line.split(": ", 1) for line in frames[-1].splitlines())
            assert last["event"] == "error"
            error = json.loads(last["data"])
            assert error["code"] == "POOL_UNAVAILABLE" and error["retriable"] is True
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_a_reloaded_replica_that_fails_restarts_on_the_new_model(start_daemon, monkeypatch):
    """OC-POOL-4007 (found by the mutation run over pool.py: a restart given no model
    survived)"""
    import hashlib

    from pool_managerd.replica import ReplicaState

    api = await start_daemon(mock_pool(models={"v2": "mock-model-v2"}))
    dispatcher = api.daemon.service.pools["mock"]
    manager = dispatcher.manager
    v2 = "sha256:" + hashlib.sha256(b"mock-model-v2").hexdigest()
    async with api.http.post(f"{api.base}/v1/pools/mock/reload", json={"model": "v2"}) as r:
        assert r.status == 202
    await dispatcher.reload_task
    replica = next(r for r in manager.replicas if r.model_digest == v2)
    restarts = replica.restarts

    async def gone() -> bool:  # the engine stops answering its probes
        return False

    monkeypatch.setattr(replica.adapter, "ready", gone)
    manager.suspect(replica, "test: the engine stopped answering")
    async with asyncio.timeout(30):
        await manager.wait_for(
            lambda: replica.restarts > restarts and replica.state is ReplicaState.READY
        )
    assert replica.model_digest == v2  # restarted on the model it was reloaded to
    _, task, _ = await api.submit(model="mock-model", prompt="x", max_tokens=2)
    assert (await api.events(task["task_id"]))[-1][0] == "end"
