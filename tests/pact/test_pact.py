"""Pact: the consumer contract (recorded against pact's real mock server) stays as committed,
and every pact in contracts/pacts/ verifies against a live orchestratord, with provider
states set through the test-only endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from pact import Verifier

from pool_managerd.launchers import die_with_parent
from tests.helpers import mock_pool
from tests.pact.consumer import write

ROOT = Path(__file__).resolve().parents[2]
PACTS = ROOT / "contracts" / "pacts"


def _interactions(path: Path) -> list[dict]:
    return json.loads(path.read_text())["interactions"]


def test_consumer_pacts_are_current(tmp_path):
    """OC-CLI-5005, OC-OAI-9002"""
    for written in write(tmp_path):
        committed = PACTS / written.name
        assert committed.exists(), "run `make pact`"
        assert _interactions(written) == _interactions(committed), "stale pact: run `make pact`"


def test_provider_honours_every_pact(tmp_path):
    """OC-CTRL-2026"""
    config = {
        "server": {"port": 0, "enable_test_endpoints": True},
        "pools": [
            {
                "id": "tiny",
                "engine": "mock",
                "model": "tiny-llama",
                "queue": {"capacity": 1},
                "replicas": {"managed": {"count": 1, "slots": 1}},
            },
            {
                "id": "spare",
                "engine": "mock",
                "model": "spare-model",
                "replicas": {"managed": {"count": 1, "slots": 1}},
            },
        ],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            Path(sys.executable).parent / "orchestratord",
            "serve",
            "--config",
            str(tmp_path / "c.yaml"),
            "--log-level",
            "warning",
        ],
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if b"serving on" in line:
                url = line.decode().split("serving on", 1)[1].strip()
                break
        else:
            raise AssertionError("daemon did not start")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        verifier = (
            Verifier("orchestratord", host="127.0.0.1")
            .add_transport(url=url)
            .add_source(PACTS)
            .state_handler(f"{url}/_test/provider-states", teardown=True, body=True)
            .set_request_timeout(10_000)
        )
        verifier.verify()
    finally:
        proc.terminate()
        proc.wait(30)


async def test_state_endpoint_is_off_by_default(start_daemon):
    """OC-CTRL-2026"""
    api = await start_daemon(mock_pool())
    async with api.http.post(f"{api.base}/_test/provider-states", json={"state": "x"}) as r:
        assert r.status == 404
