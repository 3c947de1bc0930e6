"""Benchmark (not a test): prefix-aware placement against least-loaded and round-robin
placement, on real llama-server replicas, in one run (.specs/41-placement-fairness.md).

One daemon, three pools of the same model (the project's slow model: prompt processing
dominates time to first token on this CPU), each of 4 replicas x 1 slot, 1 thread each;
`--cache-ram MIB` sets each replica's prompt cache in RAM (llama.cpp's default, 8 GiB, holds
every prompt here; 32 MiB about three of them, 16 MiB one — the kind of limit a GPU's KV
memory sets, where the pool's caches together hold the hot prompts but no one replica's
does); prefix-aware placement is told that size (`placement.engine_cache_tokens`):
- `prefix`: `placement.prefix_aware: true`, load guard 0 (a replica is one CPU thread
  here: two tasks on one run at half speed while another core idles), no waiting for a warm
  replica (`max_wait_ms: 0`, the default; docs/BENCHMARKS.md has what 100 ms did);
- `least`: the default placement (least loaded, then replica id);
- `rr`: the same default placement, but the client pins task i to replica i mod 2 —
  round-robin, through the same daemon path.

Workloads, closed loop (2 clients — one per core — each sending its next request when the
last one ends):
- shared: 80 % of requests start with one of 4 system prompts (600 bytes = 600 tokens of
  the byte-level vocabulary), 20 % are unique; every prompt ends in a unique question;
- unique: every prompt is unique (the same length): what prefix-awareness costs when it
  cannot help.

    python -m test_harness.bench.prefix [--requests N] [--cache-ram MIB]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import aiohttp

from pool_managerd.launchers import free_port
from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model
from test_harness.bench.common import pct, serve_daemon, task_stream

CLIENTS = 2
SYSTEM_PROMPTS = 4
MAX_TOKENS = 8
SYSTEM_BYTES = 600
SHARED = 0.8
REPLICAS = 4
SLOTS = 1

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _text(rng: random.Random, n: int) -> str:
    # no spaces: one token per byte in the byte-level vocabulary
    return "".join(rng.choice(_LETTERS) for _ in range(n))


def prompts(n: int, systems_n: int, shared: float, seed: int = 7) -> list[str]:
    """`n` prompts: a `shared` fraction starting with one of `systems_n` system prompts."""
    rng = random.Random(seed)
    systems = [f"S{i}:" + _text(rng, SYSTEM_BYTES) for i in range(systems_n)]
    out = []
    for i in range(n):
        head = rng.choice(systems) if rng.random() < shared else "U:" + _text(rng, SYSTEM_BYTES)
        out.append(f"{head}|q{i}:{_text(rng, 24)}")
    return out


def pool(pool_id: str, model: Path, prefix_aware: bool, cache_ram: int | None) -> dict[str, object]:
    return {
        "id": pool_id, "engine": "llamacpp", "model": pool_id, "bytes_per_token": 1,
        "engine_params": {"ignore_eos": True},
        "queue": {"capacity": 1024},
        "placement": {
            "prefix_aware": prefix_aware, "block_bytes": 64, "load_guard": 0,
            # what --cache-ram holds (16 KiB of KV per token of this model)
            "engine_cache_tokens": None if cache_ram is None else cache_ram * 64,
        },
        "replicas": {"managed": {
            "count": REPLICAS, "slots": SLOTS, "model_path": str(model), "ctx": SLOTS * 1024,
            "threads": 1, "args": [] if cache_ram is None else ["--cache-ram", str(cache_ram)],
        }},
    }  # fmt: skip


async def one(
    http: aiohttp.ClientSession, daemon: str, model: str, prompt: str, pin: str | None
) -> tuple[float, int]:
    """One task: (time to first token, tokens)."""
    body: dict[str, object] = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS}
    if pin is not None:
        body["placement"] = {"mode": "pin", "replica_id": pin}
    return await task_stream(http, daemon, body)


async def prompt_tokens(daemon: str, pool_id: str) -> tuple[float, float]:
    """(prompt tokens the engines took from their cache, prompt tokens) so far."""
    found = {"engine_cached_tokens_total": 0.0, "tokens_in_total": 0.0}
    async with aiohttp.ClientSession() as http, http.get(f"{daemon}/metrics") as r:
        for line in (await r.text()).splitlines():
            name = line.split("{", 1)[0]
            if name in found and f'pool_id="{pool_id}"' in line:
                found[name] = float(line.rsplit(" ", 1)[1])
    return found["engine_cached_tokens_total"], found["tokens_in_total"]


Result = tuple[list[float], float, float]


async def workload(daemon: str, model: str, work: list[str], round_robin: bool) -> Result:
    """Run `work` with CLIENTS closed-loop clients: (TTFTs, tokens/s, the share of prompt
    tokens the engines found in their caches)."""
    cached0, prompt0 = await prompt_tokens(daemon, model)
    todo = list(enumerate(work))
    ttfts: list[float] = []
    tokens = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal tokens
        while todo:
            i, prompt = todo.pop(0)
            pin = f"{model}-r{i % REPLICAS}" if round_robin else None
            ttft, n = await one(http, daemon, model, prompt, pin)
            ttfts.append(ttft)
            tokens += n

    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - t0
    cached, prompt = await prompt_tokens(daemon, model)
    return ttfts, tokens / elapsed, (cached - cached0) / max(prompt - prompt0, 1)


def row(name: str, result: Result, base: Result) -> str:
    ttfts, rate, hits = result
    return (
        f"| {name} | {pct(ttfts, 50):.0f} | {pct(ttfts, 99):.0f} | {rate:.1f} | {hits:.0%} "
        f"| {pct(ttfts, 50) / pct(base[0], 50):.2f} | {rate / base[1]:.2f} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--cache-ram", type=int, default=None, help="MiB per replica")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    model = write_tiny_model(tmp / "slow.gguf", TinyModelSpec.slow())
    port = free_port()
    config = {
        "server": {"port": port, "state_dir": str(tmp / "state")},
        "pools": [pool(name, model, name == "prefix", args.cache_ram)
                  for name in ("prefix", "least", "rr")],
    }  # fmt: skip
    proc, daemon = await serve_daemon(tmp, config)
    try:
        header = (
            "| placement | TTFT p50 ms | TTFT p99 ms | tokens/s | engine cache hits "
            "| TTFT p50 vs least-loaded | tokens/s vs least-loaded |\n"
            "|---|---:|---:|---:|---:|---:|---:|"
        )
        cache = "default" if args.cache_ram is None else f"{args.cache_ram} MiB"
        work = prompts(args.requests, SYSTEM_PROMPTS, SHARED)
        print(f"\nprompt cache per replica: {cache}; {SHARED:.0%} of {args.requests} requests "
              f"share one of {SYSTEM_PROMPTS} {SYSTEM_BYTES}-token system prompts, {CLIENTS} "
              f"clients\n{header}")  # fmt: skip
        results = {
            "least-loaded": await workload(daemon, "least", work, False),
            "round-robin": await workload(daemon, "rr", work, True),
            "prefix-aware": await workload(daemon, "prefix", work, False),
        }
        for name, result in results.items():
            print(row(name, result, results["least-loaded"]), flush=True)
        unique = prompts(args.requests, SYSTEM_PROMPTS, 0.0, seed=11)
        print(f"\nno shared prefixes ({args.requests} unique prompts), {CLIENTS} clients\n{header}")
        base = await workload(daemon, "least", unique, False)
        aware = await workload(daemon, "prefix", unique, False)
        print(row("least-loaded", base, base))
        print(row("prefix-aware", aware, base), flush=True)
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
