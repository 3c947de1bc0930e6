"""What tracing costs: the same daemon (a mock pool, 64 slots, `store: memory:`) with tracing
off (the default) and on (OTLP over HTTP to a sink in this process that accepts and drops
every export), one after the other in the same run: admissions/s, and TTFT p50 of
one-request streams one after another, and the daemon's CPU per stream.

    python -m test_harness.bench.tracing [--seconds 8] [--streams 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import yaml
from aiohttp import web

from pool_managerd.launchers import free_port
from test_harness.bench.common import cpu_seconds, pct, start, stop
from test_harness.bench.store import BIN, _config, admissions, ttft


async def _sink() -> tuple[web.AppRunner, int]:
    """An OTLP/HTTP receiver that drops what it gets."""

    async def traces(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    sink, sink_port = await _sink()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("off", "on"):
            port = free_port()
            config = _config("memory:", Path(tmp) / "state")
            config["server"]["port"] = port
            path = Path(tmp) / f"{mode}.yaml"
            path.write_text(yaml.safe_dump(config))
            env = (
                {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}"}
                if mode == "on"
                else {}
            )
            proc = await start([str(BIN / "orchestratord"), "serve", "--config", str(path)],
                               "serving on", env)  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                await ttft(url, 200)  # warm up
                rate = await admissions(url, args.clients, args.seconds)
                cpu = cpu_seconds(proc.pid)
                first = await ttft(url, args.streams)
                per_stream_ms = (cpu_seconds(proc.pid) - cpu) * 1000 / args.streams
            finally:
                await stop(proc)
            results[mode] = (rate, pct(first, 50), per_stream_ms)
            print(f"tracing {mode:3}  admissions/s {rate:8.0f}   TTFT p50 {pct(first, 50):.3f} ms"
                  f"   daemon CPU {per_stream_ms:.3f} ms/stream", flush=True)  # fmt: skip
    await sink.cleanup()
    (off_rate, off_p50, off_cpu), (on_rate, on_p50, on_cpu) = results["off"], results["on"]
    print(f"on/off admissions: {on_rate / off_rate:.2f}; TTFT p50 {on_p50 - off_p50:+.3f} ms; "
          f"CPU/stream {on_cpu - off_cpu:+.3f} ms")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
