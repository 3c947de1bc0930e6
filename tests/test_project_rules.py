"""Project-wide rules that keep the suite honest."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestratord.config import ConfigError, parse_config
from orchestratord.defaults import default_config

ROOT = Path(__file__).resolve().parent


def _test_files():
    return [p for p in ROOT.rglob("*.py") if p.name != "test_project_rules.py"]


def test_no_test_is_conditional_or_skipped():
    """OC-TEST-8001 (and the conftest hook fails any run that reports a skip)"""
    pattern = re.compile(r"pytest\.skip|mark\.skip|skipif|importorskip|mark\.xfail")
    offenders = [str(p) for p in _test_files() if pattern.search(p.read_text())]
    assert offenders == []


def test_no_sleep_is_used_to_synchronise_tests():
    """OC-TEST-8004"""
    offenders = []
    for path in _test_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and (node.func.attr == "sleep")
            ):
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def test_servers_bind_to_loopback():
    """OC-TEST-8003"""
    assert default_config().server.host == "127.0.0.1"
    from pool_managerd.launchers import LlamaServerLauncher, LlamaServerOptions

    cmd = LlamaServerLauncher(LlamaServerOptions(slots=1)).command("llama-server", "m", 1)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    for path in (ROOT.parent / "test_harness" / "engines").glob("*.py"):
        text = path.read_text()
        assert "0.0.0.0" not in text and ("127.0.0.1" in text or "__init__" in path.name)


def test_embedded_default_is_the_tiny_llamacpp_pool():
    """OC-CONFIG-7003"""
    config = default_config()
    (pool,) = config.pools
    assert (pool.id, pool.model, pool.engine) == ("tiny", "tiny-llama", "llamacpp")
    assert pool.replicas.managed is not None and pool.replicas.managed.count == 2
    assert Path(pool.replicas.managed.model_path or "").is_file()


@pytest.mark.parametrize(
    ("pool", "fragment"),
    [
        (
            {"id": "p", "engine": "tgi", "model": "m", "replicas": {"managed": {}}},
            "cannot be managed",
        ),
        ({"id": "p", "engine": "mock", "model": "m", "replicas": {}}, "exactly one"),
        (
            {"id": "p", "engine": "llamacpp", "model": "m", "replicas": {"managed": {}}},
            "model_path",
        ),
        (
            {"id": "p", "engine": "mock", "model": "m", "replicas": {"managed": {}}, "bogus": 1},
            "pools[0].bogus",
        ),
    ],
)
def test_cross_field_rules_are_enforced(pool, fragment):
    """OC-CONFIG-7004, OC-CONFIG-7001"""
    with pytest.raises(ConfigError) as err:
        parse_config({"pools": [pool]})
    assert any(fragment in line for line in err.value.problems), err.value.problems
    twice = {"id": "p", "engine": "mock", "model": "m", "replicas": {"managed": {}}}
    with pytest.raises(ConfigError, match="duplicate pool id"):
        parse_config({"pools": [twice, twice]})


HANGING_SUITE = """
import asyncio

async def test_waits_forever():
    await asyncio.get_running_loop().create_future()  # nothing will ever set it

async def test_after_it():
    assert True
"""


def test_a_hung_test_fails_at_the_timeout_and_the_run_goes_on(tmp_path):
    """OC-TEST-8008: on the suite's own loop (uvloop) and hooks."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_asyncio_loop_factories, pytest_collection_modifyitems"
    )
    (tmp_path / "test_hang.py").write_text(HANGING_SUITE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "-o", "asyncio_mode=auto", "--timeout", "4", str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT.parent)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "test_hang.py:5: CancelledError" in run.stdout  # where it waited
    assert "FAILED test_hang.py::test_waits_forever - TimeoutError" in run.stdout
    assert "1 failed, 1 passed" in run.stdout
