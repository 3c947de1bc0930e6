"""What the benchmarks share: starting servers, reading a process's CPU time, percentiles."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from pool_managerd.launchers import die_with_parent

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (`/proc/<pid>/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def pct(samples: Sequence[float], p: float) -> float:
    """The p-th percentile of `samples` (seconds), in ms."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000
