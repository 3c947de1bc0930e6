"""Shared fixtures: a real orchestratord on 127.0.0.1 (port 0), in the test's event loop."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop
from hypothesis import settings

from orchestratord.config import parse_config
from orchestratord.daemon import Daemon
from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model
from test_harness.postgres import PostgresServer
from tests.helpers import Api, Served, wait_ready

# Hypothesis's per-example deadline (200 ms) is a timing threshold: on a busy machine a slow
# example fails as "flaky". The properties here are about behaviour; speed is benchmarked.
settings.register_profile("orchestratord", deadline=None)
settings.load_profile("orchestratord")

# pact's FFI otherwise tries to send usage statistics out (there is no network here)
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")
# Daemons keep their task store in the XDG state dir: never the user's own. Session-wide
# daemons (pact, schemathesis) share this one; every test gets its own (below).
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="orchestratord-tests-")


@pytest.fixture(autouse=True)
def _own_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test's daemons start from an empty task store (nothing recovered from another)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The loop production runs (`orchestratord serve` uses uvloop): its callback order is
    # what a race meets in the field; the default loop hid the submit/cancel race.
    return {"uvloop": uvloop.new_event_loop}


#: What a hung test's failure report may take before the alarm (under load: seconds).
REPORT_S = 10.0


def _bounded(test: Callable[..., Awaitable[Any]], seconds: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def bounded(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(seconds):
            return await test(*args, **kwargs)

    return bounded


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Bound each async test's body by its own loop as well: pytest-timeout's alarm never
    interrupts a test that waits on uvloop (its handler does not run while uvloop sleeps),
    so a test that hangs would hang the whole run — CI's included — with nothing printed.
    The loop's bound comes first, and early enough for the failure's report to be written
    before the alarm: pending until Python runs again, it would otherwise go off in the
    test's teardown and leave its daemon running, or in the report (an internal error)."""
    seconds = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    if seconds <= 0:
        return
    bound = seconds - min(seconds / 2, REPORT_S)
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _bounded(item.obj, bound)


#: The join token of the agents' tests (agents and daemons read it from `token_file`).
TOKEN = "agents-join-token-0123456789"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "join-token"
    path.write_text(TOKEN + "\n")
    return path


# The models the project writes, for every suite that runs a real llama-server.
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-b.gguf", TinyModelSpec(seed=1)
    )


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~150 tokens/s here: slow enough to cancel or kill an engine mid-stream."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "slow.gguf", TinyModelSpec.slow())


@pytest.fixture
async def start_daemon() -> AsyncIterator[Any]:
    started: list[tuple[Daemon, aiohttp.ClientSession]] = []

    async def start(
        *pools: dict[str, Any],
        ready: bool = True,
        store: dict[str, Any] | None = None,
        batch: dict[str, Any] | None = None,
        **server: Any,
    ) -> Api:
        config = parse_config(
            {"server": {"port": 0, **server}, "store": store or {}, "batch": batch or {},
             "pools": list(pools)}
        )  # fmt: skip
        daemon = Daemon(config)
        await daemon.start()
        async with asyncio.timeout(30):  # on a shared store: once elected
            await daemon.leading.wait()
        session = aiohttp.ClientSession()
        started.append((daemon, session))
        api = Api(f"http://127.0.0.1:{daemon.port}", session, daemon)
        if ready:
            await wait_ready(api)
        return api

    yield start
    for daemon, session in started:
        await session.close()
        await daemon.stop(grace_s=0)


#: Tests whose call passed, and tests that failed in any phase, in this run.
_PASSED: set[str] = set()
_FAILED: set[str] = set()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # OC-TEST-8001: a skipped test proves nothing; the run fails instead of passing quietly.
    if report.skipped:
        raise pytest.UsageError(f"{report.nodeid} was skipped; no test may be skipped")
    if report.failed:
        _FAILED.add(report.nodeid)
    elif report.when == "call":
        _PASSED.add(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # OC-TEST-8007: what passed, for the traceability gate (`make test` runs it after this)
    out = os.environ.get("ORCH_TEST_RESULTS")
    if out:
        Path(out).write_text(json.dumps({"passed": sorted(_PASSED - _FAILED)}, indent=0))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (Debian's package, loopback). One that
    cannot start fails the tests that need it, with the reason: nothing is skipped."""
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, served: Served) -> str:
    """Runs a test on each task store backend: sets `served`'s store (a fresh database on
    the session's PostgreSQL); the backend's name."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        # a short lease: a daemon started after a SIGKILL waits out its predecessor's
        served.store = {"url": server.database(f"t{uuid.uuid4().hex[:12]}"), "lease_s": 1.0}
    return str(request.param)


@pytest.fixture
async def served(tmp_path: Any) -> AsyncIterator[Served]:
    """A real `orchestratord serve`, started (and SIGKILLed) by the test."""
    async with aiohttp.ClientSession() as http:
        daemon = Served(tmp_path, http)
        yield daemon
        if daemon.proc is not None and daemon.proc.returncode is None:
            await daemon.kill()
