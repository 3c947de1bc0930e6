"""Benchmark (not a test): orchestratord in front of real llama-server, versus the same
llama-server reached directly, in the same run, on the project's tiny model.

- added time to first token and tokens/s at 1, 4 and 16 concurrent streams
  (200 tokens each, `ignore_eos` so every stream has the same length);
- cancel-to-slot-free latency through the daemon: from the cancel request to the moment
  the engine's `/slots` shows the slot idle (slow model, polled every 1 ms).

    python -m test_harness.bench.llamacpp_relay
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from pool_managerd.probe import poll_until
from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model
from test_harness.bench.common import task_stream
from test_harness.bench.daemon_relay import free_port, pct, start

TOKENS = 200


async def direct_run(http: aiohttp.ClientSession, engine: str, seed: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    ttft, tokens = 0.0, 0
    body = {
        "prompt": "bench",
        "n_predict": TOKENS,
        "stream": True,
        "seed": seed,
        "ignore_eos": True,
    }
    async with http.post(f"{engine}/completion", json=body) as r:
        async for line in r.content:
            if line.startswith(b"data: ") and b'"content":""' not in line:
                if not tokens:
                    ttft = time.perf_counter() - t0
                tokens += 1
    return ttft, tokens


async def daemon_run(http: aiohttp.ClientSession, daemon: str, seed: int) -> tuple[float, int]:
    body = {"model": "tiny", "prompt": "bench", "max_tokens": TOKENS, "seed": seed}
    return await task_stream(http, daemon, body)


async def measure(run, target: str, streams: int, rounds: int) -> tuple[list[float], float]:
    ttfts: list[float] = []
    tokens = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        t0 = time.perf_counter()
        for r in range(rounds):
            results = await asyncio.gather(
                *(run(http, target, r * 100 + s) for s in range(streams))
            )
            ttfts += [t for t, _ in results]
            tokens += sum(n for _, n in results)
        elapsed = time.perf_counter() - t0
    return ttfts, tokens / elapsed


async def cancel_latency(daemon: str, engine: str, samples: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as http:
        for i in range(samples):
            async with http.post(
                f"{daemon}/v1/tasks",
                json={"model": "slow", "prompt": "cancel", "max_tokens": 1500, "seed": i},
            ) as r:
                task = await r.json()
            async with http.get(daemon + task["stream_url"]) as r:
                async for line in r.content:
                    if line.startswith(b"event: token"):
                        break
            t0 = time.perf_counter()
            async with http.post(f"{daemon}/v1/tasks/{task['task_id']}/cancel") as r:
                assert r.status == 204

            async def slot_free(http: aiohttp.ClientSession = http) -> bool:
                async with http.get(f"{engine}/slots") as r:
                    return not any(s["is_processing"] for s in await r.json())

            # a fixed 1 ms probe: the resolution of this measurement
            await poll_until(slot_free, first_delay_s=0.001, max_delay_s=0.001)
            out.append(time.perf_counter() - t0)
    return out


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    tiny = write_tiny_model(tmp / "tiny.gguf")
    slow = write_tiny_model(tmp / "slow.gguf", TinyModelSpec.slow())
    port = free_port()
    config = {
        "server": {"port": port, "state_dir": str(tmp / "state")},
        "pools": [
            {
                "id": "tiny",
                "engine": "llamacpp",
                "model": "tiny",
                "bytes_per_token": 1,
                "engine_params": {"ignore_eos": True},
                "replicas": {
                    "managed": {
                        "count": 1,
                        "slots": 16,
                        "model_path": str(tiny),
                        "ctx": 16 * 256,
                        "threads": 1,
                    }
                },
            },
            {
                "id": "slow",
                "engine": "llamacpp",
                "model": "slow",
                "bytes_per_token": 1,
                "replicas": {
                    "managed": {
                        "count": 1,
                        "slots": 1,
                        "model_path": str(slow),
                        "ctx": 2048,
                        "threads": 1,
                    }
                },
            },
        ],
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    proc = await start(
        [
            str(bin_dir / "orchestratord"),
            "serve",
            "--config",
            str(tmp / "c.yaml"),
            "--log-level",
            "warning",
        ],
        "serving on",
    )
    daemon = f"http://127.0.0.1:{port}"
    try:
        pools: dict[str, dict] = {}

        async def all_ready() -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{daemon}/v1/pools") as r:
                pools.update({p["pool_id"]: p for p in (await r.json())["pools"]})
            return all(p["ready"] for p in pools.values())

        async with asyncio.timeout(120):
            await poll_until(all_ready)
        engines = {k: p["replicas"][0]["endpoint"] for k, p in pools.items()}
        await measure(direct_run, engines["tiny"], 4, 2)  # warm up
        await measure(daemon_run, daemon, 4, 2)
        print(
            "| streams | direct TTFT p50 / p99 ms | daemon TTFT p50 / p99 ms "
            "| added p50 ms | direct tok/s | daemon tok/s | ratio |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for streams in (1, 4, 16):
            rounds = max(4, 64 // streams)
            d_ttft, d_rate = await measure(direct_run, engines["tiny"], streams, rounds)
            o_ttft, o_rate = await measure(daemon_run, daemon, streams, rounds)
            print(
                f"| {streams} | {pct(d_ttft, 50):.2f} / {pct(d_ttft, 99):.2f} "
                f"| {pct(o_ttft, 50):.2f} / {pct(o_ttft, 99):.2f} "
                f"| {pct(o_ttft, 50) - pct(d_ttft, 50):+.2f} | {d_rate:,.0f} | {o_rate:,.0f} "
                f"| {o_rate / d_rate:.2f} |",
                flush=True,
            )
        lat = await cancel_latency(daemon, engines["slow"], 30)
        print(
            f"\ncancel → slot free (slow model, 30 samples): p50 {pct(lat, 50):.1f} ms, "
            f"p99 {pct(lat, 99):.1f} ms"
        )
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
