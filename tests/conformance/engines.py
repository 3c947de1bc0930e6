"""The conformance registry: one `Engine` per adapter, with the most real server that runs
here, and the hooks a check needs. Adding an engine = one registration + its server
fixture in conftest.py; the checks in test_conformance.py do not change.

`faults` lists the behaviours the engine's protocol has and this server can produce;
a check is generated only for engines that list it (never skipped): llama.cpp, for
example, has no overload reply — it queues (design/PROTOCOLS.md A6).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker_adapters.base import GenerateRequest, WorkerAdapter


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
    pid: Callable[[], int] | None = None


def pause(engine: Engine) -> None:
    assert engine.pid is not None
    os.kill(engine.pid(), signal.SIGSTOP)


def resume(engine: Engine) -> None:
    assert engine.pid is not None
    os.kill(engine.pid(), signal.SIGCONT)
