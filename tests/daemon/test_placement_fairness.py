"""Prefix-aware placement and token fairness through a live daemon (mock engines; the real
llama.cpp side is in tests/engines/test_prefix_llamacpp.py). .specs/41-placement-fairness.md"""

from __future__ import annotations

import asyncio

import pytest

from orchestratord.config import ConfigError, parse_config
from tests.daemon.test_access import bearer, make_keys
from tests.helpers import mock_pool
from worker_adapters.base import GenerateRequest

SYSTEM_A = "alpha-system-prompt " * 40  # 800 bytes: 12 blocks of 64
SYSTEM_B = "bravo-system-prompt " * 40


def prefix_pool(**overrides):
    placement = {"prefix_aware": True, "block_bytes": 64, **overrides.pop("placement", {})}
    return mock_pool(
        replicas={"managed": {"count": 2, "slots": 2}}, placement=placement, **overrides
    )


async def _replica_of(api, **body) -> str:
    _, task, _ = await api.submit(model="mock-model", max_tokens=2, seed=1, **body)
    status = await api.wait_state(task["task_id"], "completed")
    return status["replica_id"]


def _counter(metrics: str, line_start: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_shared_prefix_follows_the_replica_that_saw_it(start_daemon):
    """OC-PFX-1502, OC-PFX-1503, OC-PFX-1507"""
    api = await start_daemon(prefix_pool())
    pin = lambda rid: {"mode": "pin", "replica_id": rid}  # noqa: E731
    assert await _replica_of(api, prompt=SYSTEM_A + "one", placement=pin("mock-r0")) == "mock-r0"
    assert await _replica_of(api, prompt=SYSTEM_B + "one", placement=pin("mock-r1")) == "mock-r1"
    # equal load everywhere: without prefixes the id would decide (r0); the prefix decides
    for question in ("two", "three"):
        assert await _replica_of(api, prompt=SYSTEM_B + question) == "mock-r1"
        assert await _replica_of(api, prompt=SYSTEM_A + question) == "mock-r0"
    # a prompt nobody has seen: least loaded, then the cache used least recently (r0 just
    # served A): a miss does not evict the freshest prefix
    assert await _replica_of(api, prompt="fresh " * 100) == "mock-r1"
    _, metrics = await api.get("/metrics")
    assert _counter(metrics, 'placement_decisions_total{outcome="prefix",pool_id="mock"}') == 4
    assert _counter(metrics, 'placement_decisions_total{outcome="pin",pool_id="mock"}') == 2
    prompt = _counter(metrics, 'prefix_prompt_tokens_total{pool_id="mock"}')
    cached = _counter(metrics, 'prefix_cached_tokens_total{pool_id="mock"}')
    assert 0 < cached < prompt  # four of seven placements hit 12 of 12-13 blocks
    assert 'engine_cached_tokens_total{pool_id="mock"}' not in metrics  # mock reports none


async def test_the_index_holds_what_the_engines_cache_holds(start_daemon):
    """OC-PFX-1502: `engine_cache_tokens` bounds the index as the engine's memory bounds its
    cache — what no longer fits there is not expected there."""
    api = await start_daemon(
        prefix_pool(placement={"engine_cache_tokens": 320})  # 20 blocks of 16 tokens
    )
    placement = api.daemon.service.pools["mock"].placement
    index = placement.prefix.index
    assert index.capacity == 20  # 320 tokens / (64 bytes / 4 bytes per token)
    pin = {"mode": "pin", "replica_id": "mock-r1"}
    await _replica_of(api, prompt=SYSTEM_A + "one", placement=pin)  # 12 blocks
    await _replica_of(api, prompt=SYSTEM_B + "one", placement=pin)  # 12 more: A's tail goes
    assert index.size("mock-r1") == 20

    def cached(prompt: str) -> int:
        return index.hit("mock-r1", placement.blocks(GenerateRequest(prompt, 1))).blocks

    assert (cached(SYSTEM_B), cached(SYSTEM_A)) == (12, 8)  # A keeps its head


async def test_a_replica_that_goes_down_forgets_its_prefixes(start_daemon):
    """OC-PFX-1502"""
    api = await start_daemon(prefix_pool())
    pool = api.daemon.service.pools["mock"]
    pin = {"mode": "pin", "replica_id": "mock-r1"}
    assert await _replica_of(api, prompt=SYSTEM_A + "one", placement=pin) == "mock-r1"
    assert pool.placement.prefix.index.size("mock-r1") > 0
    replica = pool.manager.get("mock-r1")
    pool.manager.suspect(replica, "test: a connection reset")  # its KV may be gone
    assert pool.placement.prefix.index.size("mock-r1") == 0
    async with asyncio.timeout(10):  # its supervisor finds it answering: Ready again
        await pool.manager.wait_for(lambda: replica.state == "ready")
    assert await _replica_of(api, prompt=SYSTEM_A + "two") == "mock-r0"  # nothing warm: the id


async def _first_dispatches(start_daemon, tmp_path, costs, work) -> list[str]:
    """Token fairness through the daemon: one slot, held by a `gate` task while every
    (tenant, prompt, max_tokens) of `work` queues (each tenant with its own key), then
    freed; every task must complete. Returns the tenants in the order the slot was handed
    out (a spy on the pool's dispatch hook)."""
    tenants = {t for t, _, _ in work} | {"gate"}
    keys = make_keys(tmp_path / "keys.yaml", **{t: (t, "submit") for t in tenants})
    api = await start_daemon(
        mock_pool(
            replicas={"managed": {"count": 1, "slots": 1}},
            queue={"capacity": 64, "fairness": "tokens", "token_costs": costs},
        ),
        keys_file=str(tmp_path / "keys.yaml"),
    )
    dispatched: list[str] = []
    placement = api.daemon.service.pools["mock"].placement
    started = placement.started
    placement.started = lambda rec, *rest: (dispatched.append(rec.task.tenant), started(rec, *rest))

    async def submit(tenant: str, prompt: str, max_tokens: int) -> str:
        async with api.http.post(
            f"{api.base}/v1/tasks", headers=bearer(keys[tenant]),
            json={"model": "mock-model", "prompt": prompt, "max_tokens": max_tokens, "seed": 1},
        ) as r:  # fmt: skip
            assert r.status == 202, await r.text()
            return str((await r.json())["task_id"])

    gate = await submit("gate", "[[stall:0]] hold the slot", 1)
    queued = {await submit(*item): item for item in work}
    async with api.http.post(
        f"{api.base}/v1/tasks/{gate}/cancel", headers=bearer(keys["gate"])
    ) as r:
        assert r.status == 204, await r.text()
    for task_id, (tenant, _, max_tokens) in queued.items():
        status = await api.wait_state(task_id, "completed", headers=bearer(keys[tenant]))
        assert status["tokens_out"] == max_tokens
    return dispatched


async def test_tokens_fairness_serves_a_light_tenant_ten_tasks_per_heavy_one(
    start_daemon, tmp_path
):
    """OC-FAIR-1510: prompt tokens count (here only they do): one 1000-token prompt (4 bytes
    per token) buys ten 100-token ones."""
    work = []
    for i in range(10):
        work += [("heavy", f"h{i} " + "x" * 4000, 1), ("light", f"l{i} " + "y" * 400, 1)]
    dispatched = await _first_dispatches(start_daemon, tmp_path, {"input": 1, "output": 0}, work)
    assert dispatched[:12] == ["gate", "heavy"] + ["light"] * 10, dispatched


async def test_tokens_fairness_charges_output_as_it_streams(start_daemon, tmp_path):
    """OC-FAIR-1510: output tokens count (here only they do): one 400-token answer buys
    ten 40-token ones."""
    work = []
    for i in range(10):
        work += [("chatty", f"c{i}", 400), ("terse", f"t{i}", 40)]
    dispatched = await _first_dispatches(start_daemon, tmp_path, {"input": 0, "output": 1}, work)
    assert dispatched[:12] == ["gate", "chatty"] + ["terse"] * 10, dispatched


def test_placement_and_fairness_config_is_validated():
    """OC-PFX-1503, OC-FAIR-1510"""
    base = {"server": {"port": 0}, "pools": [mock_pool()]}
    for bad in (
        {"placement": {"block_bytes": 8}},
        {"placement": {"load_guard": -1}},
        {"placement": {"max_wait_ms": -5}},
        {"placement": {"prefix": True}},
        {"queue": {"fairness": "bytes"}},
        {"queue": {"token_costs": {"input": -1}}},
    ):
        with pytest.raises(ConfigError):
            parse_config({**base, "pools": [mock_pool(**bad)]})
    config = parse_config({**base, "pools": [prefix_pool(queue={"fairness": "tokens"})]})
    assert config.pools[0].placement.prefix_aware and config.pools[0].queue.fairness == "tokens"
