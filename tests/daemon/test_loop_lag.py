"""The event loop's lateness is in `/metrics` (`event_loop_lag_ms`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchestratord.telemetry.loop_lag import PERIOD_S
from tests.helpers import mock_pool


async def _late_looks(api: Any) -> float:
    """How many of the loop's timers ran more than 250 ms late so far."""
    return await api.metric("event_loop_lag_ms_count") - await api.metric(
        "event_loop_lag_ms_bucket", le="250.0"
    )


async def test_a_busy_event_loop_shows_in_event_loop_lag(start_daemon):
    """OC-OBS-1406: a loop kept busy by one long step (a large answer built, a burst of
    work) slowed every request, and nothing in /metrics said so."""
    api = await start_daemon(mock_pool())
    before = await _late_looks(api)
    # one synchronous step longer than a period, on the daemon's own loop (this test's):
    # its timer comes due meanwhile and runs at least 0.3 s late
    busy_until = time.perf_counter() + PERIOD_S + 0.3
    while time.perf_counter() < busy_until:
        pass
    async with asyncio.timeout(30):
        while (late := await _late_looks(api)) == before:  # (each look lets the loop run)
            pass
    assert late > before
