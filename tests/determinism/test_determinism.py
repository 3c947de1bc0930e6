"""The determinism gate: strict pools, two replicas, 64 seeds, byte for byte; and across a
restart of the replicas (reload onto the same model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.engines.conftest import llama_pool
from tests.helpers import mock_pool, orchctl

BIN = Path(sys.executable).parent


async def test_llamacpp_and_mock_pools_are_deterministic_across_replicas_and_restart(
    start_daemon, tiny_model, tmp_path
):
    """OC-CTRL-2025, OC-POOL-4003"""
    api = await start_daemon(
        llama_pool(tiny_model, determinism="strict", replicas={"managed": {"count": 2}}),
        mock_pool("mock", determinism="strict", replicas={"managed": {"count": 2}}),
    )
    service = api.daemon.service
    for pool in ("llama", "mock"):
        proof_path = tmp_path / f"{pool}.json"
        code, _, err = await orchctl(
            api.base, "determinism", "--pool", pool, "--out", str(proof_path)
        )
        assert code == 0, err
        proof = json.loads(proof_path.read_text())
        assert proof["verdict"] == "pass" and len(proof["cases"]) == 4 * 64
        assert proof["engine"] == {"llama": "llamacpp", "mock": "mock"}[pool]
        assert proof["model_digest"].startswith("sha256:") and proof["corpus_hash"]
        # streams, not silence (a case may end at once: the model chose its end token)
        assert sum(case["tokens"] > 0 for case in proof["cases"]) > len(proof["cases"]) // 2
        # a restart: fresh engine processes on the same model, then compare
        manager = service.pools[pool].manager
        before = {r.id: r.pid for r in manager.replicas}
        model = str(tiny_model) if pool == "llama" else "mock-model"
        await service.pools[pool].reload(model)
        await manager.wait_for(lambda m=manager: all(r.state == "ready" for r in m.replicas))
        after = {r.id: r.pid for r in manager.replicas}
        assert not before.keys() & after.keys()  # new replicas...
        if pool == "llama":  # ...and new engine processes
            assert None not in after.values() and not set(before.values()) & set(after.values())
        code, _, err = await orchctl(
            api.base, "determinism", "--pool", pool, "--compare", str(proof_path)
        )
        assert code == 0, err
        # a doctored proof is caught, naming the first diverging case
        proof["cases"][5]["hash"] = "0" * 64
        (tmp_path / "bad.json").write_text(json.dumps(proof))
        code, _, err = await orchctl(
            api.base,
            "determinism",
            "--pool",
            pool,
            "--compare",
            str(tmp_path / "bad.json"),
            "--seeds",
            "64",
        )
        assert code == 4 and "case 'ascii' seed 5" in err


async def test_best_effort_pool_is_refused_by_the_gate(start_daemon):
    """OC-CTRL-2025"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 2}}))
    code, _, err = await orchctl(api.base, "determinism", "--pool", "mock", "--seeds", "2")
    assert code == 4 and "deterministic replicas" in err


async def test_triton_pool_is_deterministic_across_two_real_servers(
    start_daemon, triton_server, triton_server_b, tmp_path
):
    """OC-CTRL-2025"""
    for server in (triton_server, triton_server_b):
        await server.wait_idle()
    pool = {
        "id": "triton",
        "engine": "triton",
        "model": "tiny",
        "engine_model": "tiny_llm",
        "determinism": "strict",
        "replicas": {"endpoints": [f"grpc://{s.url}" for s in (triton_server, triton_server_b)]},
    }
    api = await start_daemon(pool)
    code, _, err = await orchctl(
        api.base, "determinism", "--pool", "triton", "--out", str(tmp_path / "triton.json")
    )
    assert code == 0, err
    proof = json.loads((tmp_path / "triton.json").read_text())
    assert proof["verdict"] == "pass" and proof["engine"] == "triton"
    assert len(proof["replicas"]) == 2 and len(proof["cases"]) == 4 * 64
