"""Probing engines, which offer no push notification for readiness or slot state.

The one place that waits by polling: it backs off from `first_delay_s` to `max_delay_s`
and stops early when `abort` completes (for example, the engine process exited).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


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
