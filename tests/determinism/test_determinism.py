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


async def test_the_junit_report_validates_and_fails_a_perturbed_replica(start_daemon, tmp_path):
    """OC-OBS-1405"""
    import xml.etree.ElementTree as ET

    import xmlschema

    schema = xmlschema.XMLSchema(Path(__file__).with_name("junit.xsd"))
    perturbed = mock_pool(
        "bad", determinism="strict", replicas={"managed": {"count": 2}},
        mock={"perturb_replica": "bad-r1"},
    )  # fmt: skip
    good = mock_pool("good", determinism="strict", replicas={"managed": {"count": 2}})
    api = await start_daemon(good, perturbed)
    reports = {}
    for pool in ("good", "bad"):
        report = tmp_path / f"{pool}.xml"
        code, _, err = await orchctl(
            api.base, "determinism", "--pool", pool, "--seeds", "3", "--junit", str(report)
        )
        assert code == (0 if pool == "good" else 4), err
        schema.validate(str(report))  # raises, naming the element, if it does not conform
        reports[pool] = ET.parse(report).getroot()
    good_suite, bad_suite = (reports[p].find("testsuite") for p in ("good", "bad"))
    # one case per prompt x seed x replica pair, plus the non-empty check
    assert good_suite.get("tests") == str(4 * 3 * 1 + 1) and good_suite.get("failures") == "0"
    assert bad_suite.get("failures") == str(4 * 3)  # every stream differs at its third token
    failure = bad_suite.find("testcase/failure")
    assert "token 2 differs" in failure.get("message")
    names = [c.get("name") for c in bad_suite.iter("testcase")]
    assert "ascii seed 0: bad-r1 vs bad-r0" in names
    props = {p.get("name"): p.get("value") for p in good_suite.iter("property")}
    assert props["engine"] == "mock" and props["model_digest"].startswith("sha256:")
    assert props["engine_version"] and props["replicas"] == "good-r0,good-r1"
