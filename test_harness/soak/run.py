"""A bounded soak: hostile load against a live daemon, on loopback, for `--minutes`.

At once, for the whole run:
- `--streams` clients each streaming one task after another (`"stream": true`), a mix of
  mock and llama.cpp work (`--engines`), reading every event to the end;
- `--queued` batch tasks submitted up front (202) and left to the queue;
- `--half-open` connections that send half a request line and nothing more, opened again
  whenever the daemon closes them;
- `--slow` readers that open a task's stream, read its status line and never read again;
- `--slow-statuses` readers that ask for the status of a task with an 8 MiB output and
  never read past its status line (the answer budget holds what the kernel does not take:
  a few of them; the rest are answered 503);
- `--stalled-bodies` task requests declaring a 1 MiB body that stop three quarters of the
  way (held by the body budget until the soak ends, or refused 503 unread while it is full);
- `--big-heads` clients sending 64 KB request heads of 8 KB lines (each answered 431 and
  closed), again each time a stream ends;
- cancels of random tasks (one every 10 streams that end);
- a prober asking `/healthz` (every 20 streams that end, and at the end) on a connection
  of its own each time, as a load balancer's or kubelet's probe does (how long each took is
  `health_wait_ms`), and reading the daemon's RSS and its listen queue.

Nothing is paced by sleeping: the load's clock is the streams that end (`pulse`). A
refused client retries when some stream has ended (room may have freed); the soak's length
is one timer.

Then the load stops, every accepted task is followed to its end, and the run asserts: RSS
stayed under `memory_budget_bytes` + `body_buffer_bytes` + `answer_buffer_bytes` + the fixed
overhead measured before the load, every accepted task reached exactly one terminal state
(status, and the stream's last event, agree), `/healthz` answered every probe, and no
request got a 5xx. The clients are `test_harness.soak.load`'s.

    python -m test_harness.soak.run [--minutes 2] [--engines mock,llamacpp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from pool_managerd.launchers import free_port
from pool_managerd.tiny_gguf import write_tiny_model
from test_harness.bench.common import pct, start, stop
from test_harness.soak.load import MiB, Soak, rss

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def _config(tmp: Path, port: int, engines: list[str], budgets: dict[str, int], queued: int) -> Path:
    pools: list[dict[str, Any]] = []
    if "mock" in engines:
        pools.append({
            "id": "mock", "engine": "mock", "model": "mock-model",
            "queue": {"capacity": queued + 1024, "policy": "reject"},
            "replicas": {"managed": {"count": 2, "slots": 64}},
            "mock": {"token_rate": 200},
        })  # fmt: skip
    if "llamacpp" in engines:
        model = write_tiny_model(tmp / "tiny.gguf")  # the project's own model
        pools.append({
            "id": "llama", "engine": "llamacpp", "model": "tiny-llama",
            "queue": {"capacity": 512, "policy": "drop-lru"},
            "replicas": {"managed": {"count": 1, "slots": 4, "model_path": str(model),
                                      "ctx": 1024, "threads": 1}},
        })  # fmt: skip
    config = {
        "server": {
            "port": port, "state_dir": str(tmp / "state"), "shutdown_grace_s": 0,
            **budgets, "max_output_bytes": 8 * MiB, "write_timeout_s": 5,
            "idle_timeout_s": 10, "max_connections": 4096,
        },
        "pools": pools,
    }  # fmt: skip
    path = tmp / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _loop_lag(url: str) -> dict[str, int]:
    """How many of the daemon's loop timers ran late, by how much (`event_loop_lag_ms`)."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    buckets = {
        float(s.labels["le"]): int(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "event_loop_lag_ms_bucket"
    }
    total = buckets[float("inf")]
    return {f"over {bound:g} ms": total - buckets[bound] for bound in (100, 500, 1000, 2500)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--engines", default="mock,llamacpp")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--half-open", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--slow-statuses", type=int, default=100)
    parser.add_argument("--stalled-bodies", type=int, default=200)
    parser.add_argument("--big-heads", type=int, default=100)
    parser.add_argument("--budget-mib", type=int, default=256)
    parser.add_argument("--body-buffer-mib", type=int, default=64)
    parser.add_argument("--answer-buffer-mib", type=int, default=64)
    args = parser.parse_args()
    args.engines = args.engines.split(",")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this client holds ~2,000
    budgets = {
        "memory_budget_bytes": args.budget_mib * MiB,
        "body_buffer_bytes": args.body_buffer_mib * MiB,
        "answer_buffer_bytes": args.answer_buffer_mib * MiB,
    }
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        path = _config(Path(tmp), port, args.engines, budgets, args.queued)
        cmd = [str(BIN / "orchestratord"), "serve", "--config", str(path)]
        proc = await start(cmd, "serving on")
        url = f"http://127.0.0.1:{port}"
        try:
            overhead = rss(proc.pid)
            soak = Soak(url, port, proc.pid, args)
            started = time.perf_counter()
            await soak.run()
            elapsed = time.perf_counter() - started
            assert proc.returncode is None, f"the daemon exited ({proc.returncode})"
            late = await _loop_lag(url)
        finally:
            await stop(proc)
    t = soak.tally
    report = {
        "minutes": args.minutes, "engines": args.engines, "elapsed_s": round(elapsed),
        "budget_mib": args.budget_mib, "body_buffer_mib": args.body_buffer_mib,
        "answer_buffer_mib": args.answer_buffer_mib,
        "rss_before_load_mib": round(overhead / MiB, 1),
        "rss_max_mib": round(t.rss_max / MiB, 1), "accepted": len(t.accepted),
        "terminal_states": dict(soak.states), "statuses": dict(t.statuses),
        "answers": dict(sorted(t.answers.items())),
        "daemon_loop_late": late,
        "health_ok": t.health_ok, "health_failed": t.health_failures,
        "health_wait_ms": {f"p{p}": round(pct(t.health_waits, p), 1) for p in (50, 99, 100)}
        if t.health_waits else {},
        "listen_queue_max": t.listen_queue_max,
        "client_loop_lag_max_s": round(t.client_lag_max, 2),
        "half_open_opened": t.half_open_opened, "slow_readers_opened": t.raw_sent["slow stream"],
        "slow_statuses_opened": t.raw_sent["slow status"],
        "stalled_bodies_opened": t.raw_sent["stalled body"],
        "big_heads_sent": t.raw_sent["big head"],
        "cancels": t.cancels, "server_errors": t.server_errors[:10],
        "problems": soak.problems[:10], "problem_count": len(soak.problems),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    bound = sum(budgets.values()) + overhead
    assert t.rss_max <= bound, "RSS passed the budgets + the fixed overhead"
    assert not soak.problems, "some accepted task did not end exactly once"
    assert not t.health_failures, "/healthz did not answer throughout"
    assert not t.server_errors, "a request got a 5xx"
    print("soak passed")


if __name__ == "__main__":
    asyncio.run(main())
