"""How late the event loop runs: every request waits that long on top of its own work.

One timer a daemon, due every `PERIOD_S`, records how late it ran (`event_loop_lag_ms`).
A loop kept busy by one long step — a large answer built, a burst of work, a collection of
everything the daemon holds — shows as a late timer, where request latencies alone would
not say why they grew."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: Seconds between two looks.
PERIOD_S = 0.5


class LoopLag:
    """Observe (ms) how late a timer due every `PERIOD_S` runs, from `start` to `stop`."""

    __slots__ = ("_due", "_handle", "_loop", "_observe")

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        self._due = self._loop.time() + PERIOD_S
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self._observe((self._loop.time() - self._due) * 1000.0)
        self._arm()
