"""Benchmark (not a test): what the orchestrator adds over calling the engine directly.

Baseline, measured in the same run: the mock engine served over HTTP with nothing in front
(`test_harness.engines.mock_http`). Through the daemon: `orchestratord serve` with one mock
pool, in-process engine, same token generator. Both servers run in their own process
(uvloop) on 127.0.0.1; this process is the client.

- added time to first token (submit → first token event), p50/p99, at 1, 64, 256 streams
  of 16 tokens;
- relay throughput: tokens/s delivered to clients at 1, 64, 256 streams of 2,000 tokens.

    python -m test_harness.bench.daemon_relay [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from pool_managerd.launchers import free_port
from test_harness.bench.common import pct, start, stop


class Target:
    """How to run one request against a server; returns (ttft_s, tokens)."""

    def __init__(self, base: str, through_daemon: bool) -> None:
        self.base = base
        self.through_daemon = through_daemon

    async def run(self, http: aiohttp.ClientSession, n: int, seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        if self.through_daemon:
            async with http.post(
                f"{self.base}/v1/tasks",
                json={
                    "model": "bench",
                    "prompt": "bench",
                    "max_tokens": n,
                    "seed": seed,
                },
            ) as r:
                assert r.status == 202, await r.text()
                url = self.base + (await r.json())["stream_url"]
            request = http.get(url)
        else:
            request = http.post(
                f"{self.base}/generate", json={"prompt": "bench", "max_tokens": n, "seed": seed}
            )
        ttft = 0.0
        tokens = 0
        async with request as r:
            async for chunk in r.content.iter_any():
                count = chunk.count(b"event: token")
                if count and not tokens:
                    ttft = time.perf_counter() - t0
                tokens += count
        return ttft, tokens


async def ttft_run(target: Target, streams: int, seconds: float) -> list[float]:
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def worker(w: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                ttft, tokens = await target.run(http, 16, w * 100_000 + i)
                assert tokens == 16
                samples.append(ttft)
                i += 1

        await asyncio.gather(*(worker(w) for w in range(streams)))
    return samples


async def relay_run(target: Target, streams: int, tokens_each: int) -> float:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(target.run(http, tokens_each, s) for s in range(streams)))
        elapsed = time.perf_counter() - t0
    assert all(tokens == tokens_each for _, tokens in results)
    return streams * tokens_each / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 64, 256])
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    direct_port, daemon_port = free_port(), free_port()
    config = {
        # the default durable store, in a directory of its own
        "server": {
            "port": daemon_port,
            "stream_buffer_events": 4096,
            "state_dir": tempfile.mkdtemp(prefix="orchestratord-bench-"),
        },
        "pools": [
            {
                "id": "bench",
                "engine": "mock",
                "model": "bench",
                "queue": {"capacity": 4096},
                "replicas": {"managed": {"count": 1, "slots": 256}},
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    direct = await start(
        [sys.executable, "-m", "test_harness.engines.mock_http", "--port", str(direct_port)],
        "ready",
    )
    daemon = await start(
        [str(bin_dir / "orchestratord"), "serve", "--config", f.name, "--log-level", "warning"],
        "serving on",
    )
    targets = {
        "direct": Target(f"http://127.0.0.1:{direct_port}", False),
        "daemon": Target(f"http://127.0.0.1:{daemon_port}", True),
    }
    try:
        await ttft_run(targets["daemon"], 4, 0.5)  # warm up both
        await ttft_run(targets["direct"], 4, 0.5)
        print(
            "| streams | direct TTFT p50 / p99 ms | daemon TTFT p50 / p99 ms "
            "| added p50 / p99 ms | direct tok/s | daemon tok/s | ratio |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for streams in args.streams:
            d = await ttft_run(targets["direct"], streams, args.seconds)
            o = await ttft_run(targets["daemon"], streams, args.seconds)
            rd = await relay_run(targets["direct"], streams, 2000)
            ro = await relay_run(targets["daemon"], streams, 2000)
            print(
                f"| {streams} | {pct(d, 50):.2f} / {pct(d, 99):.2f} "
                f"| {pct(o, 50):.2f} / {pct(o, 99):.2f} "
                f"| {pct(o, 50) - pct(d, 50):+.2f} / {pct(o, 99) - pct(d, 99):+.2f} "
                f"| {rd:,.0f} | {ro:,.0f} | {ro / rd:.2f} |",
                flush=True,
            )
    finally:
        await stop(direct, daemon)
        await asyncio.to_thread(Path(f.name).unlink)
    print(json.dumps({"note": "TTFT: submit to first token; tokens/s: delivered to clients"}))


if __name__ == "__main__":
    asyncio.run(main())
