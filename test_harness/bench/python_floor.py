"""The floor of a relay written in Python, for the router bench (not a test): a byte pipe.

Each accepted connection's request is read to its end (llhttp, via `httptools`, finds it),
sent verbatim on a fresh connection to the engine, and whatever the engine answers is
written back as it arrives. No JSON, no queue, no journal, no framing of its own: what any
Python router on uvloop pays per streamed request at the least (two connections, the reads
and writes of one request and its stream). It is the floor under orchestratord's daemon,
and under any design that moves the relay into more Python processes (relay workers): each
would pay at least this per stream, whichever core it runs on. With `--workers N` it is N
such processes sharing the port (`SO_REUSEPORT`: the kernel spreads connections over them):
what relay workers on more cores could add at best, with no hand-off to a queue's owner.

    python -m test_harness.bench.python_floor --port P --engine http://127.0.0.1:E [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

from pool_managerd.launchers import die_with_parent


class _Upstream(asyncio.Protocol):
    """The engine's side: every read goes straight to the client."""

    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()


class _Downstream(asyncio.Protocol):
    """One client connection: its request, then the engine's answer piped back."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._parser = httptools.HttpRequestParser(self)
        self._request = bytearray()
        self._client: asyncio.Transport | None = None
        self._engine: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._request += data
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self._forward(bytes(self._request)))

    async def _forward(self, request: bytes) -> None:
        assert self._client is not None
        client = self._client
        loop = asyncio.get_running_loop()
        engine, _ = await loop.create_connection(lambda: _Upstream(client), self._host, self._port)
        self._engine = engine
        engine.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._engine is not None:
            self._engine.close()


async def serve(port: int, engine: str, bound: int | None = None) -> None:
    """Serve until killed; once listening, say so: "ready" on stdout, or (a worker) a byte
    down the `bound` pipe to the parent."""
    url = urlsplit(engine)
    host, engine_port = url.hostname or "127.0.0.1", url.port or 80
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Downstream(host, engine_port), "127.0.0.1", port, backlog=4096, reuse_port=True
    )
    if bound is None:
        print("ready", flush=True)
    else:
        os.write(bound, b".")
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    # the other workers are children (the bench counts the parent's CPU with theirs); the
    # parent binds and says "ready" once all of them are listening
    read_end, write_end = os.pipe()
    for _ in range(args.workers - 1):
        if os.fork() == 0:
            die_with_parent()
            uvloop.run(serve(args.port, args.engine, bound=write_end))
            return
    for _ in range(args.workers - 1):
        os.read(read_end, 1)
    uvloop.run(serve(args.port, args.engine))


if __name__ == "__main__":
    main()
