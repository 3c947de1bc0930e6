"""What durability costs: the same daemon (a mock pool, 64 slots) with the SQLite task
store and with `store: {url: "memory:"}` — and, with `--postgres`, on PostgreSQL (a
throwaway loopback server) — run one after the other in the same run.

- admissions/s: `clients` concurrent clients submit 1-token tasks (`POST /v1/tasks`, 202)
  for `seconds`; each admission waits for its commit on the SQLite side;
- added TTFT p50 at 1 stream: one-request streams (`"stream": true`) one after another,
  request sent → first `token` event read (the store adds the admission's commit and the
  first token's checkpoint).

    python -m test_harness.bench.store [--seconds 10] [--clients 32] [--rounds 3] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from pool_managerd.launchers import free_port
from test_harness.bench.common import cpu_seconds, pct, start, stop
from test_harness.postgres import PostgresServer

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def _config(store: str, state: Path) -> dict[str, Any]:
    return {
        "server": {"state_dir": str(state), "max_retained_tasks": 100_000},
        "store": {"url": store},
        "pools": [{
            "id": "mock", "engine": "mock", "model": "mock-model",
            "queue": {"capacity": 4096}, "replicas": {"managed": {"count": 1, "slots": 64}},
        }],
    }  # fmt: skip


async def _serve(store: str, tmp: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    name = store.split(":", 1)[0]
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    config = _config(store, tmp / f"state-{name}")
    config["server"]["port"] = port
    path.write_text(yaml.safe_dump(config))
    # on PostgreSQL the daemon serves once it leads (a shared store elects a leader)
    ready = '"event":"leading"' if name == "postgresql" else "serving on"
    proc = await start([str(BIN / "orchestratord"), "serve", "--config", str(path)], ready)
    return proc, f"http://127.0.0.1:{port}"


async def admissions(url: str, clients: int, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 1}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:

        async def client() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with http.post(f"{url}/v1/tasks", json=body) as r:
                    assert r.status == 202, await r.text()
                    await r.read()
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return count / (time.perf_counter() - started)


async def ttft(url: str, n: int) -> list[float]:
    samples = []
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            sent = time.perf_counter()
            async with http.post(f"{url}/v1/tasks", json=body) as r:
                async for line in r.content:
                    if line.startswith(b"event: token"):
                        samples.append(time.perf_counter() - sent)
                        break
                await r.read()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument(
        "--rounds", type=int, default=3,
        help="each store this many times, alternating (this machine's run-to-run noise is "
        "about ±5 %%: compare medians)",
    )  # fmt: skip
    parser.add_argument(
        "--postgres", action="store_true",
        help="also PostgreSQL (a throwaway server from Debian's package, loopback, fsync off)",
    )  # fmt: skip
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {}
    stores = ["memory:", "sqlite:"]
    postgres = PostgresServer().start() if args.postgres else None
    if postgres is not None:
        stores.append(postgres.database("bench"))
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        if postgres is not None:
            cleanup.callback(postgres.close)
        for round_ in range(args.rounds):
            for store in stores:
                proc, url = await _serve(store, Path(tmp) / str(round_))
                try:
                    await ttft(url, 200)  # warm up
                    cpu = cpu_seconds(proc.pid)
                    rate = await admissions(url, args.clients, args.seconds)
                    cpu_ms = (cpu_seconds(proc.pid) - cpu) * 1000 / (rate * args.seconds)
                    first = await ttft(url, args.streams)
                finally:
                    await stop(proc)
                    # the next round starts on a clean disk (no writeback of this one's files)
                    await asyncio.to_thread(shutil.rmtree, Path(tmp) / str(round_))
                name = store.split(":", 1)[0]
                results.setdefault(name, []).append((rate, pct(first, 50), cpu_ms))
                print(f"{name:10} admissions/s {rate:8.0f}  daemon CPU {cpu_ms * 1000:4.0f} µs/task"
                      f"  TTFT p50 {pct(first, 50):.3f} ms  p99 {pct(first, 99):.3f} ms",
                      flush=True)  # fmt: skip
    memory = results.pop("memory")
    for name, runs in results.items():
        # a store against the memory run beside it, round by round; then the median
        ratios = sorted(rate / mem[0] for (rate, _, _), mem in zip(runs, memory, strict=True))
        added = sorted(p50 - mem[1] for (_, p50, _), mem in zip(runs, memory, strict=True))
        # the same on the daemon's CPU per admitted task (less noisy than a rate here,
        # where the clients share the two cores): memory's CPU over the store's
        cpu = sorted(mem[2] / ms for (_, _, ms), mem in zip(runs, memory, strict=True))
        print(f"{name}/memory admissions: {statistics.median(ratios):.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.9); "
              f"added TTFT p50 at 1 stream: {statistics.median(added):+.3f} ms "
              f"(rounds: {', '.join(f'{a:+.3f}' for a in added)}; goal <= +0.3 ms); "
              f"daemon CPU per task, memory/{name}: {statistics.median(cpu):.2f} "
              f"(rounds: {', '.join(f'{c:.2f}' for c in cpu)})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
