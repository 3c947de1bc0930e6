"""Generated contracts stay diff-clean and equal to what the daemon serves."""

from __future__ import annotations

from pathlib import Path

from orchestratord.api.app import build_app
from orchestratord.api.openapi import artifacts, document
from orchestratord.api.operations import OPERATIONS
from tests.helpers import mock_pool

ROOT = Path(__file__).resolve().parents[2]


def test_regen_is_diff_clean():
    """OC-CTRL-2024, OC-CONFIG-7002"""
    for rel, content in artifacts().items():
        path = ROOT / "contracts" / rel
        assert path.exists(), f"{path} missing: run `make regen`"
        assert path.read_text() == content, f"{path} is stale: run `make regen`"
    assert artifacts() == artifacts()  # a second run changes nothing


async def test_operation_table_matches_the_daemon_routes(start_daemon):
    """OC-CTRL-2024"""
    api = await start_daemon(mock_pool())
    app = build_app(api.daemon.service)
    served = {
        (r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"
    }
    assert served == {(op.method, op.path) for op in OPERATIONS}
    status, doc = await api.get("/openapi.json")
    assert status == 200 and doc == document()
    assert doc["openapi"] == "3.1.0"
    task_post = doc["paths"]["/v1/tasks"]["post"]
    assert {"202", "400", "404", "429", "503"} <= set(task_post["responses"])
    assert "Retry-After" in task_post["responses"]["429"]["headers"]
