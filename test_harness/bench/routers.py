"""Benchmark (not a test): orchestratord against a peer router, in front of the same engine.

Engines: the mock engine served over HTTP as an OpenAI-compatible server (fast: what a
router costs shows), and real llama-server on the tiny model. Paths, each measured in the
same run: the engine directly; orchestratord through its OpenAI door (chat), its native
one-request stream and its native two-request form; `vllm-router` (PyPI, a Rust router,
installed into its own venv in the user cache on first use); and, with `--paths ...
python-pipe`, the floor of any Python relay (`python_floor`: a uvloop byte pipe), with
`python-pipe-2` that pipe in two processes sharing the port (relay workers at their best:
no hand-off), and with `aiohttp-pipe` the daemon's HTTP parts alone (`aiohttp_floor`:
aiohttp's server and the adapters' engine client, piping the body). Every request opens a
fresh connection, streams `--tokens` tokens, closed loop at each concurrency for
`--seconds` per path, in `--slices` rounds in which the paths take turns (forwards, then
backwards): this VM's speed drifts by tens of per cent over minutes, and paths measured one
after the other compared the machine's moments more than the paths.

Reported per path and concurrency: TTFT p50/p99 (request start to first token) and what
the router adds to the direct path's; router CPU ms per stream (`/proc/<pid>/stat`); tokens/s
delivered, as a ratio to direct (and the range of that ratio over the rounds, each against
direct's slice in the same round).

    python -m test_harness.bench.routers [--engine mock|llamacpp] [--streams 1 16 64 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import yaml

from orchestratord.defaults import cache_dir
from pool_managerd.launchers import (
    LlamaServerLauncher,
    LlamaServerOptions,
    free_port,
    llama_server_binary,
)
from pool_managerd.tiny_gguf import write_tiny_model
from test_harness.bench.common import cpu_seconds, pct, start, stop

VLLM_ROUTER = "vllm-router==0.1.17"
#: Relays measured beside the daemon, to say what its parts cost: (path, module, its
#: arguments, label).
FLOORS = (
    ("python-pipe", "python_floor", (), "python pipe (floor)"),
    ("python-pipe-2", "python_floor", ("--workers", "2"), "python pipe (floor), 2 processes"),
    ("aiohttp-pipe", "aiohttp_floor", (), "aiohttp + engine client pipe"),
)
MESSAGES = [{"role": "user", "content": "benchmark"}]


def vllm_router_binary() -> Path:
    """vllm-router from PyPI in its own venv in the user cache (made once)."""
    venv = cache_dir() / "venvs" / "vllm-router"
    binary = venv / "bin" / "vllm-router"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", VLLM_ROUTER]
        subprocess.run(pip, check=True)
    return binary


@dataclass
class Path_:
    """One way to reach the engine: how to start a request and how to count its tokens."""

    name: str
    url: str
    #: token marker in the response bytes
    marker: bytes
    kind: str  # openai | native1 | native2
    pid: int | None = None
    #: the server's CPU is its own and its child processes' (workers)
    children: bool = False

    def body(self, tokens: int, seed: int) -> dict[str, object]:
        if self.kind == "openai":
            return {"model": "bench", "messages": MESSAGES, "max_tokens": tokens,
                    "seed": seed, "stream": True}  # fmt: skip
        return {"model": "bench", "prompt": "benchmark", "max_tokens": tokens, "seed": seed,
                "stream": self.kind == "native1"}  # fmt: skip

    async def run(self, http: aiohttp.ClientSession, tokens: int, seed: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        body = orjson.dumps(self.body(tokens, seed))
        headers = {"Content-Type": "application/json"}
        path = "/v1/chat/completions" if self.kind == "openai" else "/v1/tasks"
        request = http.post(self.url + path, data=body, headers=headers)
        if self.kind == "native2":
            async with request as r:
                stream_url = self.url + orjson.loads(await r.read())["stream_url"]
            request = http.get(stream_url)
        ttft, seen = 0.0, 0
        async with request as r:
            async for chunk in r.content.iter_any():
                count = chunk.count(self.marker)
                if count and not seen:
                    ttft = time.perf_counter() - t0
                seen += count
        return ttft, seen


@dataclass
class Tally:
    """One path's measurements at one concurrency, summed over its slices."""

    samples: list[float] = field(default_factory=list)
    delivered: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    #: Tokens/s of each slice against the direct path's slice in the same round.
    ratios: list[float] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.delivered / self.elapsed

    @property
    def cpu_ms(self) -> float:
        """The router's CPU per stream."""
        return self.cpu * 1000 / len(self.samples)


async def level(path: Path_, streams: int, seconds: float, tokens: int, into: Tally) -> float:
    """Closed loop: `streams` clients, fresh connection per request, for `seconds`; adds
    to `into` and returns this slice's tokens/s."""
    samples = into.samples
    delivered = 0
    cpu0 = cpu_seconds(path.pid, children=path.children) if path.pid else 0.0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def client(c: int) -> None:
            nonlocal delivered
            i = 0
            while time.perf_counter() < deadline:
                ttft, seen = await path.run(http, tokens, c * 1_000_000 + i)
                samples.append(ttft)
                delivered += seen
                i += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(streams)))
        elapsed = time.perf_counter() - t0
    into.cpu += (cpu_seconds(path.pid, children=path.children) - cpu0) if path.pid else 0.0
    into.delivered += delivered
    into.elapsed += elapsed
    return delivered / elapsed


async def start_engine(engine: str, tmp: Path) -> tuple[asyncio.subprocess.Process, str, str]:
    """(process, url, engine kind for the daemon's config)."""
    port = free_port()
    if engine == "mock":
        cmd = [sys.executable, "-m", "test_harness.engines.mock_http", "--port", str(port)]
        return await start(cmd, "ready"), f"http://127.0.0.1:{port}", "openai"
    model = write_tiny_model(tmp / "tiny.gguf")
    binary, _ = llama_server_binary()
    options = LlamaServerOptions(slots=16, ctx=16 * 512, threads=1)
    cmd = LlamaServerLauncher(options).command(binary, str(model), port)
    return await start(cmd, "listening on"), f"http://127.0.0.1:{port}", "llamacpp"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", choices=["mock", "llamacpp"], default="mock")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--seconds", type=float, default=3.0, help="per path and concurrency")
    ap.add_argument(
        "--slices", type=int, default=3,
        help="each level's seconds in this many slices, the paths taking turns (forwards, "
        "then backwards), so the machine's drift falls on every path alike",
    )  # fmt: skip
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--paths", nargs="+", default=["vllm-router", "openai", "native1", "native2"])
    ap.add_argument("--store", default="sqlite:", help='store.url ("memory:": no journal)')
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    engine, engine_url, kind = await start_engine(args.engine, tmp)
    daemon_port, router_port = free_port(), free_port()
    pool = {"id": "bench", "engine": kind, "model": "bench", "queue": {"capacity": 65536},
            "replicas": {"endpoints": [engine_url]}, "slots_per_endpoint": 4096,
            "engine_model": "mock-model"}  # fmt: skip
    # the default durable store, in the run's own directory (unless --store says otherwise)
    config = {"server": {"port": daemon_port, "state_dir": str(tmp / "state")},
              "store": {"url": args.store}, "pools": [pool]}  # fmt: skip
    (tmp / "c.yaml").write_text(yaml.safe_dump(config))
    bin_dir = Path(sys.executable).parent
    serve = [str(bin_dir / "orchestratord"), "serve", "--config", str(tmp / "c.yaml"),
             "--log-level", "warning"]  # fmt: skip
    daemon = await start(serve, "serving on")
    router_cmd = [str(vllm_router_binary()), "--host", "127.0.0.1", "--port", str(router_port),
                  "--worker-urls", engine_url, "--policy", "round_robin",
                  "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                  "--log-level", "warning"]  # fmt: skip
    router = await start(router_cmd, "Starting server", env={"NO_COLOR": "1"})
    floors = {}  # name -> (process, url, label)
    for name, module, extra, label in FLOORS:
        if name in args.paths:
            port = free_port()
            cmd = [sys.executable, "-m", f"test_harness.bench.{module}", "--port", str(port),
                   "--engine", engine_url, *extra]  # fmt: skip
            floors[name] = (await start(cmd, "ready"), f"http://127.0.0.1:{port}", label)
    daemon_url = f"http://127.0.0.1:{daemon_port}"
    chat = b'{"content":'
    direct = Path_("direct", engine_url, chat, "openai")
    router_url = f"http://127.0.0.1:{router_port}"
    token = b"event: token"
    paths = {
        "vllm-router": Path_("vllm-router", router_url, chat, "openai", router.pid),
        "openai": Path_("orchestratord openai", daemon_url, chat, "openai", daemon.pid),
        "native1": Path_("orchestratord native 1-req", daemon_url, token, "native1", daemon.pid),
        "native2": Path_("orchestratord native 2-req", daemon_url, token, "native2", daemon.pid),
    }
    for name, (floor, url, label) in floors.items():
        paths[name] = Path_(label, url, chat, "openai", floor.pid, children=True)
    chosen = [paths[p] for p in args.paths]
    try:
        for p in [direct, *chosen]:  # warm up
            await level(p, 4, 0.5, args.tokens, Tally())
        print(f"engine: {args.engine}, {args.tokens} tokens per stream, {args.seconds:g} s "
              f"per level, fresh connection per request, {os.cpu_count()} cores")  # fmt: skip
        print("| path | streams | TTFT p50 / p99 ms | added p50 / p99 ms | CPU ms/stream "
              "| tok/s | vs direct (slices) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|")
        for streams in args.streams:
            tally = await _rounds([direct, *chosen], streams, args)
            base = tally[direct.name]
            b50, b99 = pct(base.samples, 50), pct(base.samples, 99)
            print(f"| direct | {streams} | {b50:.2f} / {b99:.2f} | | "
                  f"| {base.tok_s:,.0f} | 1.00 |", flush=True)  # fmt: skip
            for p in chosen:
                r = tally[p.name]
                p50, p99 = pct(r.samples, 50), pct(r.samples, 99)
                print(f"| {p.name} | {streams} | {p50:.2f} / {p99:.2f} "
                      f"| {p50 - b50:+.2f} / {p99 - b99:+.2f} | {r.cpu_ms:.2f} "
                      f"| {r.tok_s:,.0f} | {r.tok_s / base.tok_s:.2f} "
                      f"({min(r.ratios):.2f} to {max(r.ratios):.2f}) |", flush=True)  # fmt: skip
    finally:
        await stop(*(floor for floor, _, _ in floors.values()), router, daemon, engine)


async def _rounds(paths: list[Path_], streams: int, args: argparse.Namespace) -> dict[str, Tally]:
    """Every path at `streams`, in `args.slices` rounds of turns (the first path, direct,
    is each round's baseline)."""
    tally = {p.name: Tally() for p in paths}
    for round_ in range(args.slices):
        rates = {}
        for p in paths if round_ % 2 == 0 else paths[::-1]:
            seconds = args.seconds / args.slices
            rates[p.name] = await level(p, streams, seconds, args.tokens, tally[p.name])
        for p in paths[1:]:
            tally[p.name].ratios.append(rates[p.name] / rates[paths[0].name])
    return tally


if __name__ == "__main__":
    asyncio.run(main())
