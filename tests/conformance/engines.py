"""The conformance registry: one `Engine` per adapter, with the most real server that runs
here, and the hooks a check needs. Adding an engine = one registration + its server
fixture in conftest.py; the checks in test_conformance.py do not change.

`faults` lists the behaviours the engine's protocol has and this server can produce;
a check is generated only for engines that list it (never skipped): llama.cpp, for
example, has no overload reply — it queues (design/PROTOCOLS.md A6).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pool_managerd.probe import poll_until
from worker_adapters.base import GenerateRequest, WorkerAdapter


@dataclass(frozen=True)
class Server:
    """A test engine shared by the session."""

    url: str
    #: How many requests the server itself says it is processing.
    busy: Callable[[], Awaitable[int]]
    pid: int | None = None

    async def wait_idle(self) -> None:
        """Until nothing an earlier test started still runs here (bounded): the
        precondition of every test that shares this server."""

        last: list[int] = []

        async def idle() -> bool:
            last.append(await self.busy())
            return last[-1] == 0

        try:
            async with asyncio.timeout(60):
                await poll_until(idle)
        except TimeoutError:
            raise AssertionError(
                f"{self.url} still reports {last[-1:] or '?'} requests in flight after 60 s"
            ) from None


@dataclass
class Engine:
    name: str
    make_adapter: Callable[[], WorkerAdapter]
    #: check, on the engine's side, how many requests it is processing
    busy: Callable[[], Awaitable[int]] | None = None
    faults: set[str] = field(default_factory=set)
    #: prompt fragments that make the engine stall / die / grow tokens (directive engines)
    prompts: dict[str, str] = field(default_factory=dict)
    #: engine-specific request tweaks for a check (e.g. llama.cpp logit_bias for `stop`)
    tweaks: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    #: a request the engine rejects (may tweak the adapter), for the `invalid` check
    invalid: Callable[[Any], GenerateRequest] | None = None
    #: concurrent requests the engine admits before it answers "overloaded"
    slots: int = 2
    #: pause / resume / kill the engine process (process engines)
    pid: Callable[[], int | None] | None = None
    #: the shared server behind it (None: an in-process engine made per test)
    server: Server | None = None


def _signal(engine: Engine, sig: signal.Signals) -> None:
    pid = engine.pid() if engine.pid is not None else None
    assert pid is not None
    os.kill(pid, sig)


def pause(engine: Engine) -> None:
    _signal(engine, signal.SIGSTOP)


def resume(engine: Engine) -> None:
    _signal(engine, signal.SIGCONT)
