"""schemathesis against a live daemon (mock pools) from the generated OpenAPI: a bounded,
deterministic number of examples per operation; no 5xx; every response conforms."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.helpers import mock_pool

ROOT = Path(__file__).resolve().parents[2]
CHECKS = (
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance,response_headers_conformance"
)


@pytest.mark.parametrize("plane", ["data", "control", "openai"])
async def test_generated_requests_get_conforming_answers(start_daemon, plane, tmp_path):
    """OC-CTRL-2027"""
    api = await start_daemon(
        mock_pool("tiny", model="tiny-llama"), mock_pool("spare", model="spare-model")
    )
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "schemathesis",
        "run",
        str(ROOT / "contracts" / "openapi" / f"{plane}.yaml"),
        "--url",
        api.base,
        "-n",
        "15",
        "--generation-deterministic",
        "--checks",
        CHECKS,
        "--request-timeout",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the checkout
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert " passed" in out.decode()
