"""Prefix-aware placement against real llama-server replicas: a shared prefix lands on the
slot that holds it, and the engine says it reused it (.specs/41-placement-fairness.md)."""

from __future__ import annotations

import pytest

from tests.engines.conftest import llama_pool
from worker_adapters.base import GenerateRequest
from worker_adapters.llamacpp_http import LlamaCppAdapter

pytestmark = pytest.mark.llamacpp

# byte-level vocabulary: one token per byte without spaces; 160 bytes = 5 blocks of 32
SYSTEM_A = "Alpha:" + "abcdefghij" * 15 + "-end"
SYSTEM_B = "Bravo:" + "klmnopqrst" * 15 + "-end"


def _metric(metrics: str, line_start: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_shared_prefix_lands_on_the_warm_slot_and_the_engine_reuses_it(
    start_daemon, tiny_model
):
    """OC-PFX-1505, OC-PFX-1507"""
    api = await start_daemon(
        llama_pool(
            tiny_model,
            replicas={"managed": {"count": 2, "slots": 2}},
            placement={"prefix_aware": True, "block_bytes": 32},
        )
    )
    book = api.daemon.service.book

    async def run(prompt: str, **body) -> tuple[str, int | None]:
        _, task, _ = await api.submit(
            model="llama-model", prompt=prompt, max_tokens=4, seed=1, **body
        )
        status = await api.wait_state(task["task_id"], "completed")
        end = book.get(task["task_id"]).engine_end
        return status["replica_id"], end.cached_tokens

    pin = lambda rid: {"placement": {"mode": "pin", "replica_id": rid}}  # noqa: E731
    assert await run(SYSTEM_A + "q1", **pin("llama-r0")) == ("llama-r0", 0)  # cold
    assert await run(SYSTEM_B + "q1", **pin("llama-r1")) == ("llama-r1", 0)
    # equal load: by id llama-r0 would win; the prefix sends B to r1, on the slot it used
    replica, cached = await run(SYSTEM_B + "q2")
    assert replica == "llama-r1" and cached is not None and cached >= 160
    replica, cached = await run(SYSTEM_A + "q2")
    assert replica == "llama-r0" and cached is not None and cached >= 160
    # on r0 now: slot 0 holds A, and a different prompt takes the other slot, keeping A warm
    assert await run("Other:" + "uvwxyz0123" * 15, **pin("llama-r0")) == ("llama-r0", 0)
    replica, cached = await run(SYSTEM_A + "q3")
    assert replica == "llama-r0" and cached is not None and cached >= 160
    _, metrics = await api.get("/metrics")
    reused = _metric(metrics, 'engine_cached_tokens_total{pool_id="llama"}')
    assert reused >= 3 * 160
    assert _metric(metrics, 'placement_decisions_total{outcome="prefix",pool_id="llama"}') == 3


async def test_the_chosen_slot_is_named_to_llama_server():
    """OC-PFX-1505: `id_slot` only when placement chose a slot."""
    adapter = LlamaCppAdapter("http://127.0.0.1:9")
    assert adapter._body(GenerateRequest("p", 4, slot=1))["id_slot"] == 1
    assert "id_slot" not in adapter._body(GenerateRequest("p", 4))
    await adapter.close()
