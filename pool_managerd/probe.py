"""Waiting for a state: on change notifications (`Changes`), or by probing engines, which
offer no push notification for readiness or slot state (`poll_until`).

`poll_until` is the one place that waits by polling: it backs off from `first_delay_s` to
`max_delay_s` and stops early when `abort` completes (for example, the engine process
exited).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Changes:
    """Wakes whoever waits for a state each time its owner says something changed."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds, checked again after every change (wait on
        state, never on time). Bound it with `asyncio.timeout`."""
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter


class Aborted(Exception):
    """`abort` finished before the condition held; carries its result."""


async def poll_until(
    check: Callable[[], Awaitable[bool]],
    *,
    first_delay_s: float = 0.01,
    max_delay_s: float = 0.5,
    abort: asyncio.Future[str] | None = None,
) -> None:
    """Return once `await check()` is true. Wrap in `asyncio.timeout` to bound it."""
    delay = first_delay_s
    while not await check():
        if abort is None:
            await asyncio.sleep(delay)
        else:
            done, _ = await asyncio.wait({abort}, timeout=delay)
            if done:
                raise Aborted(abort.result())
        delay = min(delay * 2, max_delay_s)
