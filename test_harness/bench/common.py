"""What the benchmarks share: starting servers (a daemon on a config), one task's time to
first token, reading a process's CPU time, percentiles."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from pool_managerd.launchers import die_with_parent
from pool_managerd.probe import poll_until

TICKS = os.sysconf("SC_CLK_TCK")


async def start(
    cmd: Sequence[str], ready: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start a server and wait for `ready` in its output (then keep draining it)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while ready not in (line := (await proc.stdout.readline()).decode()):
            if not line:
                raise RuntimeError(f"{cmd[0]} exited before {ready!r}")
    asyncio.get_running_loop().create_task(proc.stdout.read())  # drain
    return proc


async def stop(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        await proc.wait()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process so far (`/proc/<pid>/stat`); with `children`,
    plus that of its live child processes (a server that forks workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS
    if not children:
        return own
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(kid), children=True) for kid in kids)


def pct(samples: Sequence[float], p: float) -> float:
    """The p-th percentile of `samples` (seconds), in ms."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def serve_daemon(
    tmp: Path, config: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, str]:
    """Write `config` under `tmp`, start `orchestratord serve` on it (its port is
    `config["server"]["port"]`), and wait until every pool is ready: (process, base URL)."""
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    daemon_bin = str(Path(sys.executable).parent / "orchestratord")
    proc = await start(
        [daemon_bin, "serve", "--config", str(tmp / "c.yaml"), "--log-level", "warning"],
        "serving on",
    )
    daemon = f"http://127.0.0.1:{config['server']['port']}"

    async def all_ready() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{daemon}/v1/pools", headers=headers) as r,
        ):
            return all(p["ready"] for p in (await r.json())["pools"])

    async with asyncio.timeout(180):
        await poll_until(all_ready)
    return proc, daemon


async def task_stream(
    http: aiohttp.ClientSession,
    daemon: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[float, int]:
    """One task through the native API, submitted then streamed: (seconds to the first
    token, token events)."""
    t0 = time.perf_counter()
    async with http.post(f"{daemon}/v1/tasks", json=body, headers=headers) as r:
        url = daemon + (await r.json())["stream_url"]
    ttft, tokens = 0.0, 0
    async with http.get(url, headers=headers) as r:
        async for line in r.content:
            if line.startswith(b"event: token"):
                if not tokens:
                    ttft = time.perf_counter() - t0
                tokens += 1
    return ttft, tokens
