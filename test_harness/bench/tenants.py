"""Admission does not grow with the number of tenants: the same daemon (a mock pool whose
one slot is held, so everything submitted stays queued) takes `--tasks` submits under one
`X-Tenant-Id`, then, restarted, the same number with a fresh tenant on every submit.

    python -m test_harness.bench.tenants [--tasks 20000] [--clients 16]

Goal (issue 12): submits/s with 20,000 tenants within 1.5x of one tenant.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml

from pool_managerd.launchers import free_port
from test_harness.bench.common import pct, start, stop

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


async def _serve(tmp: Path, tasks: int) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    config = {
        "server": {"port": port, "shutdown_grace_s": 0, "state_dir": str(tmp / "state")},
        "store": {"url": "memory:"},
        "pools": [{
            "id": "mock", "engine": "mock", "model": "mock-model",
            "queue": {"capacity": tasks + 16},
            "replicas": {"managed": {"count": 1, "slots": 1}},
            "mock": {"start_delay_s": 3600},
        }],
    }  # fmt: skip
    path = tmp / "tenants.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await start([str(BIN / "orchestratord"), "serve", "--config", str(path)], "serving on")
    return proc, f"http://127.0.0.1:{port}"


async def submits(
    url: str, tasks: int, clients: int, tenant: Callable[[int], str]
) -> tuple[float, list[float]]:
    """Submit `tasks` tasks from `clients` concurrent clients: (submits/s, latencies)."""
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 1}
    numbers = itertools.count()
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:

        async def client() -> None:
            while (i := next(numbers)) < tasks:
                sent = time.perf_counter()
                headers = {"X-Tenant-Id": tenant(i)}
                async with http.post(f"{url}/v1/tasks", json=body, headers=headers) as r:
                    assert r.status == 202, await r.text()
                    await r.read()
                latencies.append(time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return tasks / (time.perf_counter() - started), latencies


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    rates = {}
    cases: dict[str, Callable[[int], str]] = {
        "1 tenant": lambda i: "one",
        f"{args.tasks} tenants": lambda i: f"tenant-{i}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, tenant in cases.items():
            proc, url = await _serve(Path(tmp), args.tasks)
            try:
                rate, latencies = await submits(url, args.tasks, args.clients, tenant)
            finally:
                await stop(proc)
            rates[name] = rate
            print(f"{name:>16}: {rate:7.0f} submits/s   p50 {pct(latencies, 50):.2f} ms"
                  f"   p99 {pct(latencies, 99):.2f} ms", flush=True)  # fmt: skip
    one, many = rates.values()
    print(f"1 tenant / many tenants: {one / many:.2f}x  (goal <= 1.5x)")


if __name__ == "__main__":
    asyncio.run(main())
