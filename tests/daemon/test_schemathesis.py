"""schemathesis against a live daemon (mock pools) from the generated OpenAPI: a bounded,
deterministic number of examples per operation; no 5xx; every response conforms.

`make test` keeps it short; `make soak` sets SCHEMATHESIS_EXAMPLES=1000 and
SCHEMATHESIS_CHECKS=all."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import mock_pool

ROOT = Path(__file__).resolve().parents[2]
CHECKS = os.environ.get(
    "SCHEMATHESIS_CHECKS",
    "not_a_server_error,response_schema_conformance,status_code_conformance,"
    "content_type_conformance,response_headers_conformance",
)
EXAMPLES = os.environ.get("SCHEMATHESIS_EXAMPLES", "15")
#: With every check: all but `positive_data_acceptance`, which expects any schema-valid
#: request to succeed — a schema cannot say which models are served or that an uploaded
#: batch file holds valid request lines, so a schema-valid `model: "0"` is rightly a 404.
EXCLUDED = ["--exclude-checks", "positive_data_acceptance"] if CHECKS == "all" else []


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
        EXAMPLES,
        "--generation-deterministic",
        "--checks",
        CHECKS,
        *EXCLUDED,
        "--request-timeout",
        "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # its crash cache (.schemathesis/) stays out of the checkout
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert " passed" in out.decode()
