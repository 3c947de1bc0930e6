"""schemathesis against a live daemon (mock pools) from the generated OpenAPI: a bounded,
deterministic number of examples per operation; no 5xx; every response conforms.

`make test` keeps it short; `make soak` sets SCHEMATHESIS_EXAMPLES=1000 and
SCHEMATHESIS_CHECKS=all."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from orchestratord.api.openapi import document
from orchestratord.api_models import KeyCreate, KeyRole
from orchestratord.keyring import make_entry, write_entries
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


async def assert_schemathesis_passes(document: Path, url: str, cwd: Path, *args: str) -> str:
    """Run schemathesis over `document` against `url`; its output (asserting it passed)."""
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "schemathesis",
        "run",
        str(document),
        "--url",
        url,
        "--generation-deterministic",
        "--checks",
        CHECKS,
        *EXCLUDED,
        "--request-timeout",
        "5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,  # its crash cache (.schemathesis/) stays out of the checkout
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert " passed" in out.decode()
    return out.decode()


@pytest.mark.parametrize("plane", ["data", "control", "openai"])
async def test_generated_requests_get_conforming_answers(start_daemon, plane, tmp_path):
    """OC-CTRL-2027"""
    api = await start_daemon(
        mock_pool("tiny", model="tiny-llama"), mock_pool("spare", model="spare-model")
    )
    # this daemon has no keys (as `make run` serves): its API is the document's without
    # the bearer scheme, which the role test below checks
    served = yaml.safe_load((ROOT / "contracts" / "openapi" / f"{plane}.yaml").read_text())
    for methods in served["paths"].values():
        for operation in methods.values():
            operation.pop("security", None)
    document = tmp_path / "open.json"
    document.write_text(json.dumps(served))
    await assert_schemathesis_passes(document, api.base, tmp_path, "-n", EXAMPLES)


@pytest.mark.parametrize("role", ["read", "submit", "operator", "admin"])
async def test_every_role_gets_only_documented_answers(start_daemon, role, tmp_path):
    """OC-CTRL-2027, OC-AUTH-1301: with a key of each role over the whole API, no 5xx and
    nothing undocumented (401, 403 and 404 are documented where they can happen)."""
    entry, key = make_entry(KeyCreate(tenant=f"t-{role}", roles=[KeyRole(role)]))
    write_entries(tmp_path / "keys.yaml", [entry])
    api = await start_daemon(
        mock_pool("tiny", model="tiny-llama"), keys_file=str(tmp_path / "keys.yaml")
    )
    whole = tmp_path / "api.json"
    whole.write_text(json.dumps(document()))
    examples = os.environ.get("SCHEMATHESIS_ROLE_EXAMPLES", "3")
    await assert_schemathesis_passes(
        whole, api.base, tmp_path, "-n", examples, "-H", f"Authorization: Bearer {key}"
    )
