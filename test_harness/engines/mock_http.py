"""The mock engine over HTTP, with no orchestrator in front: the fast fake engine the
benchmarks put behind orchestratord, behind a peer router, and call directly.

It speaks the OpenAI API as vLLM serves it (`POST /v1/completions`,
`POST /v1/chat/completions`, stream and not, `GET /v1/models`, `GET /health`) plus the
project's native framing (`POST /generate`, the daemon's SSE token events) — the same
seeded token generator behind every route.

    python -m test_harness.engines.mock_http --port 8100 [--token-rate 0] [--ledger]

With `--ledger` (tests only) it keeps the engine's own account of what it completed — a
request counts once its whole answer was written — and can hold every stream before its
next token: `GET /_test/ledger?at_least=N` answers once N requests completed, `POST
/_test/hold` once every request in flight is parked, `GET /_test/ledger?parked=N` once N
are, `POST /_test/release` lets them go.
A test that kills whatever sits in front of this engine can then prove that no request
was completed twice.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from aiohttp import web

from worker_adapters.base import ChatMessage, End, GenerateRequest, Token
from worker_adapters.mock import MockAdapter, MockConfig, render_chat

MODEL = "mock-model"
ADAPTER: web.AppKey[MockAdapter] = web.AppKey("adapter", MockAdapter)


class Ledger:
    """Completed requests by prompt; a gate that parks streams (see the module doc)."""

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        #: Requests that reached the engine, by prompt (whether or not they completed).
        self.received: Counter[str] = Counter()
        self.in_flight = 0
        self.parked = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self._changed = asyncio.Condition()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await self._changed.wait_for(predicate)

    async def guard(self, events: AsyncIterator[Token | End]) -> AsyncIterator[Token | End]:
        """`events`, parked before each one while the gate is closed."""
        async for event in events:
            if not self.gate.is_set():
                self.parked += 1
                await self._notify()
                try:
                    await self.gate.wait()
                finally:
                    self.parked -= 1
            yield event

    @asynccontextmanager
    async def request(self, prompt: str) -> AsyncIterator[Callable[[], None]]:
        """In flight from the request's start until its answer is written and counted:
        call what it yields once the whole answer was written."""
        self.in_flight += 1
        self.received[prompt] += 1
        await self._notify()

        def done() -> None:
            self.completed[prompt] += 1

        try:
            yield done
        finally:
            self.in_flight -= 1
            await self._notify()


LEDGER: web.AppKey[Ledger | None] = web.AppKey("ledger", Ledger)


async def ledger_state(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    assert ledger is not None
    at_least = int(request.query.get("at_least", "0"))
    parked = int(request.query.get("parked", "0"))
    await ledger.wait(lambda: ledger.completed.total() >= at_least and ledger.parked >= parked)
    return web.json_response(
        {
            "total": ledger.completed.total(),
            "parked": ledger.parked,
            "completed": ledger.completed,
            "received": ledger.received,
        }
    )


async def hold(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    assert ledger is not None
    ledger.gate.clear()
    await ledger.wait(lambda: ledger.parked == ledger.in_flight)
    return web.json_response({"parked": ledger.parked, "total": ledger.completed.total()})


async def release(request: web.Request) -> web.Response:
    ledger = request.app[LEDGER]
    assert ledger is not None
    ledger.gate.set()
    return web.json_response({"total": ledger.completed.total()})


def _request(body: dict[str, Any]) -> GenerateRequest:
    messages = tuple(ChatMessage(m["role"], m["content"]) for m in body.get("messages") or ())
    prompt = body.get("prompt", "")
    return GenerateRequest(
        prompt[0] if isinstance(prompt, list) else prompt,
        body.get("max_tokens") or body.get("n_predict") or 16,
        body.get("seed"),
        messages=messages,
    )


def _usage(end: End) -> dict[str, int]:
    prompt = end.tokens_in or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": end.tokens_out,
        "total_tokens": prompt + end.tokens_out,
    }


async def generate(request: web.Request) -> web.StreamResponse:
    """Native framing: `event: token` / `event: end`."""
    body = orjson.loads(await request.read())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    i = 0
    async for event in request.app[ADAPTER].stream(_request(body)):
        if isinstance(event, Token):
            frame = b'event: token\nid: %d\ndata: {"i":%d,"t":%s}\n\n'
            await response.write(frame % (i, i, orjson.dumps(event.text)))
            i += 1
    await response.write(b"event: end\ndata: {}\n\n")
    await response.write_eof()
    return response


async def openai(request: web.Request) -> web.StreamResponse:
    """OpenAI completions and chat completions, as vLLM answers them."""
    ledger = request.app[LEDGER]
    if ledger is None:
        return await _openai(request, None)
    body = orjson.loads(await request.read())
    gen = _request(body)
    async with ledger.request(gen.prompt or render_chat(gen)) as done:
        return await _openai(request, done, ledger)


async def _openai(
    request: web.Request, done: Callable[[], None] | None, ledger: Ledger | None = None
) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    chat = request.path.endswith("/chat/completions")
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": "cmpl-mock", "created": int(time.time()), "model": body.get("model", MODEL)}
    gen = _request(body)
    events: AsyncIterator[Token | End] = request.app[ADAPTER].stream(gen)
    if ledger is not None:
        events = ledger.guard(events)
    if not body.get("stream"):
        text, end = [], None
        async for event in events:
            if isinstance(event, Token):
                text.append(event.text)
            else:
                end = event
        assert isinstance(end, End)
        content = "".join(text)
        choice = {"index": 0, "finish_reason": end.finish_reason}
        choice.update(
            {"message": {"role": "assistant", "content": content}} if chat else {"text": content}
        )
        usage = _usage(end)
        answer = web.Response(
            body=orjson.dumps({**head, "object": kind, "choices": [choice], "usage": usage}),
            content_type="application/json",
        )
        await answer.prepare(request)
        await answer.write_eof()
        if done is not None:
            done()
        return answer
    prefix = b"data: %s" % orjson.dumps({**head, "object": f"{kind}.chunk" if chat else kind})[:-1]
    piece = b',"choices":[{"index":0,"delta":{"content":%s},"finish_reason":null}]}\n\n'
    if not chat:
        piece = b',"choices":[{"index":0,"text":%s,"finish_reason":null}]}\n\n'
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    async for event in events:
        if isinstance(event, Token):
            await response.write(prefix + piece % orjson.dumps(event.text))
        else:
            last = b',"choices":[{"index":0,%s,"finish_reason":"%s"}]}\n\n' % (
                b'"delta":{}' if chat else b'"text":""',
                event.finish_reason.encode(),
            )
            usage = orjson.dumps(_usage(event))
            await response.write(
                prefix
                + last
                + prefix
                + b',"choices":[],"usage":%s}\n\n' % usage
                + b"data: [DONE]\n\n"
            )
    await response.write_eof()
    if done is not None:
        done()
    return response


async def models(request: web.Request) -> web.Response:
    card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "mock", "max_model_len": 4096}
    return web.json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    return web.Response()


def make_app(token_rate: float = 0.0, ledger: bool = False) -> web.Application:
    app = web.Application()
    app[ADAPTER] = MockAdapter(MockConfig(slots=100_000, token_rate=token_rate))
    app[LEDGER] = Ledger() if ledger else None
    if ledger:
        app.router.add_get("/_test/ledger", ledger_state)
        app.router.add_post("/_test/hold", hold)
        app.router.add_post("/_test/release", release)
    app.router.add_post("/generate", generate)
    app.router.add_post("/v1/completions", openai)
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token-rate", type=float, default=0.0, help="tokens/s per stream (0: max)")
    ap.add_argument("--ledger", action="store_true", help="count completions; hold/release")
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        make_app(args.token_rate, args.ledger),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print("ready", flush=True),
        backlog=4096,
        handler_cancellation=True,  # a client that goes away aborts its request (as vLLM does)
    )


if __name__ == "__main__":
    main()
