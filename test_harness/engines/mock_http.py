"""The mock engine over HTTP, with no orchestrator in front: the fast fake engine the
benchmarks put behind orchestratord, behind a peer router, and call directly.

It speaks the OpenAI API as vLLM serves it (`POST /v1/completions`,
`POST /v1/chat/completions`, stream and not, `GET /v1/models`, `GET /health`) plus the
project's native framing (`POST /generate`, the daemon's SSE token events) — the same
seeded token generator behind every route.

    python -m test_harness.engines.mock_http --port 8100 [--token-rate 0]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import orjson
from aiohttp import web

from worker_adapters.base import ChatMessage, End, GenerateRequest, Token
from worker_adapters.mock import MockAdapter, MockConfig

MODEL = "mock-model"
ADAPTER: web.AppKey[MockAdapter] = web.AppKey("adapter", MockAdapter)


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
    body = orjson.loads(await request.read())
    chat = request.path.endswith("/chat/completions")
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": "cmpl-mock", "created": int(time.time()), "model": body.get("model", MODEL)}
    events = request.app[ADAPTER].stream(_request(body))
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
        return web.Response(
            body=orjson.dumps({**head, "object": kind, "choices": [choice], "usage": usage}),
            content_type="application/json",
        )
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
    return response


async def models(request: web.Request) -> web.Response:
    card = {"id": MODEL, "object": "model", "created": 0, "owned_by": "mock", "max_model_len": 4096}
    return web.json_response({"object": "list", "data": [card]})


async def health(request: web.Request) -> web.Response:
    return web.Response()


def make_app(token_rate: float = 0.0) -> web.Application:
    app = web.Application()
    app[ADAPTER] = MockAdapter(MockConfig(slots=100_000, token_rate=token_rate))
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
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    web.run_app(
        make_app(args.token_rate),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print("ready", flush=True),
        backlog=4096,
    )


if __name__ == "__main__":
    main()
