"""Shared fixtures: a real orchestratord on 127.0.0.1 (port 0), in the test's event loop."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvloop

from orchestratord.config import parse_config
from orchestratord.daemon import Daemon
from tests.helpers import Api, wait_ready

# pact's FFI otherwise tries to send usage statistics out (there is no network here)
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    # The loop production runs (`orchestratord serve` uses uvloop): its callback order is
    # what a race meets in the field; the default loop hid the submit/cancel race.
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def start_daemon() -> AsyncIterator[Any]:
    started: list[tuple[Daemon, aiohttp.ClientSession]] = []

    async def start(*pools: dict[str, Any], ready: bool = True, **server: Any) -> Api:
        config = parse_config({"server": {"port": 0, **server}, "pools": list(pools)})
        daemon = Daemon(config)
        await daemon.start()
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


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # OC-TEST-8001: a skipped test proves nothing; the run fails instead of passing quietly.
    if report.skipped:
        raise pytest.UsageError(f"{report.nodeid} was skipped; no test may be skipped")
