"""How a replica comes to life, one launcher per kind of replica.

A launcher starts (or attaches to) one engine and returns a `Launched` handle: the adapter
to talk to it, and an awaitable that finishes when the engine is gone (process exit, failed
probes), with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from worker_adapters.base import WorkerAdapter
from worker_adapters.mock import MockAdapter, MockConfig


@dataclass
class Launched:
    adapter: WorkerAdapter
    #: Completes with a description of why the engine went away.
    gone: Callable[[], Awaitable[str]]
    stop: Callable[[], Awaitable[None]]
    endpoint: str | None = None


class Launcher(Protocol):
    async def launch(self, replica_id: str, model: str) -> Launched: ...


class MockLauncher:
    """In-process mock engines (tests, benchmarks, demos without llama.cpp). A model ref
    starting with `fail:` (or `fail_start`) exits while loading, as an engine does on a bad
    model file (to exercise restarts and reload rollback)."""

    def __init__(self, template: MockConfig) -> None:
        self.template = template

    async def launch(self, replica_id: str, model: str) -> Launched:
        fail = self.template.fail_start or model.startswith("fail:")
        config = replace(self.template, model=model, fail_start=fail)
        adapter = MockAdapter(config)
        stopped = asyncio.Event()

        async def gone() -> str:
            if fail:  # like an engine that exits while loading a bad model
                return f"failed to load model {model!r}"
            await stopped.wait()
            return "stopped"

        async def stop() -> None:
            stopped.set()

        return Launched(adapter, gone, stop, endpoint=f"mock://{replica_id}")
