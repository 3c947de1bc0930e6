"""A pool of each attached engine serves jobs through the daemon end to end."""

from __future__ import annotations

import pytest

from tests.helpers import wait_ready


@pytest.mark.parametrize("engine", ["tgi", "triton", "openai", "llamacpp"])
async def test_attached_pool_serves_jobs_end_to_end(engine, request, start_daemon):
    """OC-ADAPT-3007"""
    if engine == "tgi":
        endpoint = request.getfixturevalue("tgi_server")
    elif engine == "triton":
        endpoint = "grpc://" + request.getfixturevalue("triton_server")
    else:
        endpoint = request.getfixturevalue("llama_server").url
    pool = {
        "id": engine,
        "engine": engine,
        "model": f"{engine}-model",
        "engine_model": "tiny_llm" if engine == "triton" else None,
        "replicas": {"endpoints": [endpoint]},
        "slots_per_endpoint": 2,
    }
    api = await start_daemon(pool, ready=False)
    await wait_ready(api)
    _, task, _ = await api.submit(
        model=f"{engine}-model", prompt="end to end", max_tokens=6, seed=11
    )
    events = await api.events(task["task_id"])
    assert events[0][0] == "started" and events[0][2]["engine"] == engine
    assert events[-1][0] == "end" and events[-1][2]["tokens_out"] == 6
    _, caps = await api.get("/v1/capabilities")
    assert caps["engines"][0]["engine"] == engine and caps["engines"][0]["engine_version"]
    _, info = await api.get(f"/v1/pools/{engine}")
    assert info["replicas"][0]["state"] == "ready" and info["replicas"][0]["slots_total"] >= 1
