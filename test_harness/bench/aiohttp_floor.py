"""The daemon's HTTP machinery with nothing of the daemon between it, for the router bench
(not a test): aiohttp's server, served as the daemon serves it (uvloop, no access log, its
connections accepted by the daemon's `Listener`), in front of the adapters' engine client
(`worker_adapters.http_client`, pooled connections), piping an OpenAI chat stream's body
through as it arrives. No parsing of the request, no queue, journal, dispatch or framing of
its own. Between `python_floor` (a uvloop byte pipe) and the daemon, it says how a stream's
cost divides: the HTTP parts the daemon is built on, and the daemon's own work.

    python -m test_harness.bench.aiohttp_floor --port P --engine http://127.0.0.1:E
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from orchestratord.api.listener import Listener
from worker_adapters.http_client import HttpClient

CHAT = "/v1/chat/completions"


def make_app(engine: str) -> web.Application:
    client = HttpClient(engine)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        upstream = await client.request("POST", CHAT, body, {"Content-Type": "application/json"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        read_to_end = False
        try:
            while chunk := await upstream.chunk():
                await response.write(chunk)
            read_to_end = True
        finally:
            client.release(upstream, read_to_end=read_to_end)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(CHAT, chat)
    return app


async def serve(port: int, engine: str) -> None:
    runner = web.AppRunner(make_app(engine), access_log=None)
    await runner.setup()
    assert runner.server is not None
    await Listener.bind(runner.server, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--engine", required=True)
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.engine))


if __name__ == "__main__":
    main()
