"""Pools, drain, reload, capabilities, health and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pool_managerd.launchers import MockLauncher
from tests.helpers import mock_pool, wait_ready


async def test_pools_health_and_capabilities(start_daemon):
    """OC-CTRL-2022, OC-CTRL-2016"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 2, "slots": 3}}))
    status, body = await api.get("/v1/pools")
    assert status == 200 and [p["pool_id"] for p in body["pools"]] == ["mock"]
    pool = body["pools"][0]
    assert pool["ready"] is True and pool["engine"] == "mock" and pool["queue_capacity"] == 64
    assert [(r["state"], r["slots_total"], r["slots_free"]) for r in pool["replicas"]] == [
        ("ready", 3, 3),
        ("ready", 3, 3),
    ]
    assert pool["replicas"][0]["engine_version"] == "mock-1"
    assert pool["replicas"][0]["model_digest"].startswith("sha256:")
    status, health = await api.get("/v1/pools/mock/health")
    assert health["live"] and health["ready"] and not health["draining"]
    assert health["metrics"]["slots_total"] == 6
    assert (await api.get("/v1/pools/none"))[0] == 404
    status, caps = await api.get("/v1/capabilities")
    assert caps["api_version"] and caps["engines"][0]["engine"] == "mock"
    assert caps["engines"][0]["ctx_max"] == 4096
    assert (await api.get("/healthz"))[0] == 200
    assert (await api.get("/readyz"))[0] == 200


async def test_readyz_is_503_until_a_replica_is_ready(start_daemon):
    """OC-CTRL-2016"""
    api = await start_daemon(mock_pool(mock={"start_delay_s": 0.2}), ready=False)
    assert (await api.get("/readyz"))[0] == 503
    # work submitted before readiness waits in the queue and runs once a replica is up
    _, task, _ = await api.submit(model="mock-model", prompt="early", max_tokens=2)
    await wait_ready(api)
    events = await api.events(task["task_id"])
    assert events[-1][0] == "end"
    assert (await api.get("/readyz"))[0] == 200


async def test_drain_stops_admission_then_cancels_at_deadline(start_daemon):
    """OC-CTRL-2022"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    _, running, _ = await api.submit(model="mock-model", prompt="[[stall:1]]")
    await api.wait_state(running["task_id"], "running")
    _, queued, _ = await api.submit(model="mock-model", prompt="waits")
    async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={"deadline_ms": 50}) as r:
        assert r.status == 202 and (await r.json())["status"] == "draining"
    _, err, headers = await api.submit(expect=503, model="mock-model", prompt="late")
    # the drain state, not "retry in 1 s": only an operator's resume lifts it
    assert err["code"] == "POOL_DRAINING" and err["retriable"] is False
    assert "Retry-After" not in headers and "resume" in err["message"]
    for tid in (running["task_id"], queued["task_id"]):
        events = await api.events(tid)
        assert events[-1][0] == "error" and events[-1][2]["code"] == "POOL_UNAVAILABLE"
    _, pool = await api.get("/v1/pools/mock")
    assert pool["draining"] is True and pool["replicas"][0]["state"] == "draining"


async def test_reload_switches_atomically_and_rolls_back_on_failure(start_daemon):
    """OC-CTRL-2022, OC-LOAD-1210"""
    api = await start_daemon(
        mock_pool(replicas={"managed": {"count": 2, "slots": 1}}, models={"broken": "fail:x"})
    )
    service = api.daemon.service
    manager = service.pools["mock"].manager
    old_ids = {r.id for r in manager.replicas}
    _, running, _ = await api.submit(model="mock-model", prompt="[[stall:1]]")
    await api.wait_state(running["task_id"], "running")

    # a model that cannot start: rolled back, the old replicas keep serving
    async with api.http.post(f"{api.base}/v1/pools/mock/reload", json={"model": "broken"}) as r:
        assert r.status == 202
    await service.pools["mock"].reload_task
    _, pool = await api.get("/v1/pools/mock")
    assert {r["replica_id"] for r in pool["replicas"]} == old_ids
    assert "rolled back" in pool["last_error"]
    assert pool["reload"] == {"model": "fail:x", "state": "failed", "error": pool["last_error"]}
    _, ok, _ = await api.submit(model="mock-model", prompt="still served", max_tokens=2)
    assert (await api.events(ok["task_id"]))[-1][0] == "end"

    # a good model: new replicas take over; the busy old one finishes its task first
    await service.pools["mock"].reload("mock-model-v2")
    _, pool = await api.get("/v1/pools/mock")
    states = {r["replica_id"]: r["state"] for r in pool["replicas"]}
    new_ids = set(states) - old_ids
    assert len(new_ids) == 2 and all(states[i] == "ready" for i in new_ids)
    _, fresh, _ = await api.submit(model="mock-model", prompt="on v2", max_tokens=2)
    started = (await api.events(fresh["task_id"]))[0][2]
    assert started["replica_id"] in new_ids
    assert (await api.cancel(running["task_id"])) == 204
    await manager.wait_for(lambda: not any(r.id in old_ids for r in manager.replicas))
    assert {r.id for r in manager.replicas} == new_ids
    # OC-LOAD-1210: the retired replicas left no series behind
    _, text = await api.get("/metrics")
    labelled = {
        sample.labels.get("replica_id")
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert not labelled & old_ids and new_ids <= labelled


def scrape(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_metrics_minimum_set(start_daemon):
    """OC-CTRL-2016"""
    api = await start_daemon(
        mock_pool(queue={"capacity": 1}, replicas={"managed": {"count": 1, "slots": 1}})
    )
    _, blocker, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    await api.submit(model="mock-model", prompt="q")
    await api.submit(expect=429, model="mock-model", prompt="full")
    await api.cancel(blocker["task_id"])
    status, text = await api.get("/metrics")
    assert status == 200
    families = scrape(text)
    for name in [
        "tasks_enqueued",
        "tasks_started",
        "tasks_canceled",
        "tasks_rejected",
        "queue_depth",
        "tokens_in",
        "tokens_out",
        "latency_first_token_ms",
        "latency_decode_ms",
        "admission_backpressure_events",
        "kv_cache_usage_ratio",
        "vram_used_bytes",
        "gpu_utilization",
        "placement_decisions",
        "replica_restarts",
    ]:
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert (
        samples[("tasks_enqueued_total", (("pool_id", "mock"), ("priority", "interactive")))] == 2
    )
    assert (
        samples[
            ("admission_backpressure_events_total", (("policy", "reject"), ("pool_id", "mock")))
        ]
        == 1
    )
    assert samples[("tasks_canceled_total", (("pool_id", "mock"), ("reason", "client")))] == 1
    for f in families.values():
        for s in f.samples:
            assert "task_id" not in s.labels and "session_id" not in s.labels


async def test_queued_work_ends_with_a_typed_error_when_no_replica_can_start(
    start_daemon, monkeypatch
):
    """OC-CTRL-2022, OC-POOL-4006"""
    # The restart waits until the task is queued: under load the replica used to fail for
    # good before the submit arrived, which then (rightly) got 503 instead of a queued task.
    queued = asyncio.Event()
    launch = MockLauncher.launch
    launches = 0

    async def gated(self: MockLauncher, replica_id: str, model: str) -> Any:
        nonlocal launches
        launches += 1
        if launches > 1:
            await queued.wait()
        return await launch(self, replica_id, model)

    monkeypatch.setattr(MockLauncher, "launch", gated)
    api = await start_daemon(
        mock_pool(mock={"fail_start": True}, max_restarts=1, restart_backoff_s=0.01), ready=False
    )
    _, task, _ = await api.submit(model="mock-model", prompt="waits for a replica")
    queued.set()
    events = await api.events(task["task_id"])
    assert [e[0] for e in events] == ["error"]
    assert events[0][2]["code"] == "POOL_UNAVAILABLE" and "can start" in events[0][2]["message"]
    _, err, _ = await api.submit(expect=503, model="mock-model", prompt="after")
    assert err["code"] == "POOL_UNAVAILABLE"
    _, pool = await api.get("/v1/pools/mock")
    assert pool["replicas"][0]["state"] == "failed" and pool["replicas"][0]["last_error"]
