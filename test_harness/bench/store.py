"""What durability costs: the same daemon (a mock pool, 64 slots) with the SQLite task
store and with `store: {url: "memory:"}` — and, with `--postgres`, on PostgreSQL (a
throwaway loopback server) — all running at once, loaded one at a time in short
alternating slices, so the machine's drift (±15 % over minutes on this VM) falls on every
store alike instead of on whichever ran last.

- admissions/s: `clients` concurrent clients submit 1-token tasks (`POST /v1/tasks`, 202);
  each admission waits for its commit on a durable store;
- added TTFT p50 at 1 stream: one-request streams (`"stream": true`) one after another,
  request sent → first `token` event read, on two pools:
  - `in-process`: the mock engine runs in the daemon and answers at once, so nothing
    overlaps the commits: the admission's (before the first byte) and the first token's
    checkpoint — the worst case for a journal;
  - `over HTTP`: the same mock engine served as an OpenAI-compatible server on loopback
    (the routers bench's engine), as every real engine is reached: the admission's commit
    runs while the engine works, and what the store adds is what is left of it.

    python -m test_harness.bench.store [--seconds 12] [--slices 8] [--clients 32] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from pool_managerd.launchers import free_port
from test_harness.bench.common import cpu_seconds, pct, start, stop
from test_harness.bench.routers import start_engine
from test_harness.postgres import PostgresServer

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


#: The pools' models: the mock engine in the daemon, and served over HTTP.
IN_PROCESS, OVER_HTTP = "mock-model", "http-model"


def _config(store: str, state: Path, engine_url: str) -> dict[str, Any]:
    return {
        "server": {"state_dir": str(state), "max_retained_tasks": 100_000},
        "store": {"url": store},
        "pools": [{
            "id": "mock", "engine": "mock", "model": IN_PROCESS,
            "queue": {"capacity": 4096}, "replicas": {"managed": {"count": 1, "slots": 64}},
        }, {
            "id": "http", "engine": "openai", "model": OVER_HTTP, "engine_model": "mock-model",
            "queue": {"capacity": 4096}, "replicas": {"endpoints": [engine_url]},
            "slots_per_endpoint": 64,
        }],
    }  # fmt: skip


async def _serve(store: str, tmp: Path, engine_url: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    name = store.split(":", 1)[0]
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    config = _config(store, tmp / f"state-{name}", engine_url)
    config["server"]["port"] = port
    path.write_text(yaml.safe_dump(config))
    # on PostgreSQL the daemon serves once it leads (a shared store elects a leader)
    ready = '"event":"leading"' if name == "postgresql" else "serving on"
    proc = await start([str(BIN / "orchestratord"), "serve", "--config", str(path)], ready)
    return proc, f"http://127.0.0.1:{port}"


async def admissions(url: str, clients: int, seconds: float) -> tuple[int, float]:
    """(tasks admitted, seconds taken) by `clients` clients submitting for `seconds`."""
    count = 0
    deadline = time.perf_counter() + seconds
    body = {"model": IN_PROCESS, "prompt": "x", "max_tokens": 1}
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
        return count, time.perf_counter() - started


async def ttft(url: str, n: int, model: str = IN_PROCESS) -> list[float]:
    samples = []
    body = {"model": model, "prompt": "x", "max_tokens": 4, "stream": True}
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


@dataclass
class Tally:
    """One store's measurements, summed over its slices."""

    admitted: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    #: Admissions/s of each slice (paired with the other stores' slices).
    rates: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    #: ... with the engine over HTTP.
    first_http: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.admitted / self.seconds

    @property
    def cpu_us(self) -> float:
        """Daemon CPU per admitted task, µs."""
        return self.cpu_s * 1e6 / self.admitted


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=12.0, help="of admissions per store")
    parser.add_argument("--slices", type=int, default=8, help="alternating, per store")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--streams", type=int, default=2000, help="TTFT samples per store")
    parser.add_argument(
        "--postgres", action="store_true",
        help="also PostgreSQL (a throwaway server from Debian's package, loopback, fsync off)",
    )  # fmt: skip
    args = parser.parse_args()
    stores = ["memory:", "sqlite:"]
    postgres = PostgresServer().start() if args.postgres else None
    if postgres is not None:
        stores.append(postgres.database("bench"))
    names = [store.split(":", 1)[0] for store in stores]
    tally = {name: Tally() for name in names}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        if postgres is not None:
            cleanup.callback(postgres.close)
        engine, engine_url, _ = await start_engine("mock", Path(tmp))
        served = [await _serve(store, Path(tmp), engine_url) for store in stores]
        try:
            for _, url in served:
                await ttft(url, 200)  # warm up
                await ttft(url, 200, OVER_HTTP)
            for slice_ in range(args.slices):  # memory first, then last, then first...
                for name, (proc, url) in _turns(names, served, slice_):
                    cpu = cpu_seconds(proc.pid)
                    count, seconds = await admissions(url, args.clients, args.seconds / args.slices)
                    t = tally[name]
                    t.cpu_s += cpu_seconds(proc.pid) - cpu
                    t.admitted, t.seconds = t.admitted + count, t.seconds + seconds
                    t.rates.append(count / seconds)
            per_slice = args.streams // args.slices
            for slice_ in range(args.slices):
                for name, (_, url) in _turns(names, served, slice_):
                    tally[name].first += await ttft(url, per_slice)
                    tally[name].first_http += await ttft(url, per_slice, OVER_HTTP)
        finally:
            await stop(*(proc for proc, _ in served), engine)
    memory = tally["memory"]
    for name, t in tally.items():
        print(f"{name:10} admissions/s {t.rate:8.0f}  daemon CPU {t.cpu_us:4.0f} µs/task"
              f"  TTFT p50/p99 in-process {pct(t.first, 50):.3f}/{pct(t.first, 99):.3f} ms,"
              f" over HTTP {pct(t.first_http, 50):.3f}/{pct(t.first_http, 99):.3f} ms",
              flush=True)  # fmt: skip
    for name, t in tally.items():
        if t is memory:
            continue
        slices = sorted(r / m for r, m in zip(t.rates, memory.rates, strict=True))
        print(f"{name}/memory admissions: {t.rate / memory.rate:.2f} (slices "
              f"{slices[0]:.2f} to {slices[-1]:.2f}, median {statistics.median(slices):.2f}; "
              f"goal >= 0.9); daemon CPU per task, memory/{name}: "
              f"{memory.cpu_us / t.cpu_us:.2f}; added TTFT p50 at 1 stream (goal <= +0.3 ms): "
              f"{pct(t.first_http, 50) - pct(memory.first_http, 50):+.3f} ms over HTTP, "
              f"{pct(t.first, 50) - pct(memory.first, 50):+.3f} ms in-process")  # fmt: skip


def _turns(
    names: list[str], served: list[tuple[asyncio.subprocess.Process, str]], slice_: int
) -> list[tuple[str, tuple[asyncio.subprocess.Process, str]]]:
    """This slice's order: forwards on even slices, backwards on odd ones (no store always
    runs right after another)."""
    turns = list(zip(names, served, strict=True))
    return turns if slice_ % 2 == 0 else turns[::-1]


if __name__ == "__main__":
    asyncio.run(main())
