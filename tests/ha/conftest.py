"""Daemons sharing one PostgreSQL database, as real `orchestratord serve` processes: each
node's log is read as it is written, so a test waits for what a daemon says (`leading`,
`standing by`, `stepping down`) instead of sleeping."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers import start_ledger_engine, start_serve

#: Short enough that a takeover is quick; long enough that a leader whose loop stalls under
#: a loaded 2-core machine (llama.cpp, three SDK clients, a batch) keeps its lease.
LEASE_S = 2.0


class Node:
    """One daemon of the group: its own config and log; the group's database."""

    def __init__(self, name: str, tmp: Path, store_url: str, state_dir: Path) -> None:
        self.name, self.tmp = name, tmp
        self.store = {"url": store_url, "lease_s": LEASE_S}
        self.state_dir = state_dir
        #: Extra `server` settings (the state directory and no drain grace are set).
        self.server: dict[str, Any] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.lines: list[str] = []
        self._said = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, *pools: dict[str, Any]) -> None:
        path = self.tmp / f"{self.name}.yaml"
        server = {"state_dir": str(self.state_dir), "shutdown_grace_s": 0, **self.server}
        path.write_text(yaml.safe_dump({"pools": list(pools), "store": self.store,
                                        "server": server}))  # fmt: skip
        self.lines = []
        self.proc, self.url = await start_serve(path)
        self._reader = asyncio.get_running_loop().create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := (await proc.stderr.readline()).decode():
            async with self._said:
                self.lines.append(line)
                self._said.notify_all()
        async with self._said:
            self.lines.append("<exited>")
            self._said.notify_all()

    async def said(self, needle: str, times: int = 1, timeout_s: float = 60) -> str:
        """Wait until the daemon has logged `needle` `times` times; the last such line."""
        async with asyncio.timeout(timeout_s), self._said:
            while True:
                hits = [line for line in self.lines if needle in line]
                if len(hits) >= times:
                    return hits[-1]
                assert "<exited>" not in self.lines, f"{self.name} exited: {self.lines[-5:]}"
                await self._said.wait()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process dies only once resumed
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@pytest.fixture
async def nodes(
    postgres: Any, tmp_path: Path
) -> AsyncIterator[tuple[Node, Node, aiohttp.ClientSession]]:
    """Two daemons on a fresh database of the session's PostgreSQL (not yet started), each
    with a state directory of its own, as on two hosts; and a client."""
    url = postgres.database(f"ha{uuid.uuid4().hex[:12]}")
    a = Node("a", tmp_path, url, tmp_path / "state-a")
    b = Node("b", tmp_path, url, tmp_path / "state-b")
    async with aiohttp.ClientSession() as http:
        try:
            yield a, b, http
        finally:
            await asyncio.gather(a.kill(), b.kill())
            for node in (a, b):  # shown with a failure (pytest captures it otherwise)
                print(f"--- daemon {node.name}'s log, last lines ---", *node.lines[-40:], sep="\n")


@pytest.fixture
async def ledger_engine() -> AsyncIterator[str]:
    """An OpenAI-compatible mock engine outside the daemons, keeping the ledger of what it
    completed: its URL."""
    proc, url = await start_ledger_engine()
    try:
        yield url
    finally:
        proc.kill()
        await proc.wait()
