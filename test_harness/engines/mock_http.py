"""The mock engine over HTTP, with no orchestrator in front: the baseline that daemon
benchmarks compare against (same token generator, same SSE framing, one HTTP hop).

    python -m test_harness.engines.mock_http --port 8100
    POST /generate {"prompt": "...", "max_tokens": N, "seed": S}  ->  SSE token events
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web

from worker_adapters.base import GenerateRequest, Token
from worker_adapters.mock import MockAdapter, MockConfig


async def generate(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    adapter: MockAdapter = request.app["adapter"]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    i = 0
    async for event in adapter.stream(
        GenerateRequest(body["prompt"], body["max_tokens"], body.get("seed"))
    ):
        if isinstance(event, Token):
            await response.write(
                b'event: token\nid: %d\ndata: {"i":%d,"t":%s}\n\n'
                % (i, i, json.dumps(event.text).encode())
            )
            i += 1
    await response.write(b"event: end\ndata: {}\n\n")
    await response.write_eof()
    return response


async def make_app() -> web.Application:
    app = web.Application()
    app["adapter"] = MockAdapter(MockConfig(slots=100_000))
    app.router.add_post("/generate", generate)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print("ready", flush=True),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
