"""A TGI protocol server for tests — no real TGI can run here (it ships as a container
with CUDA shards; PyPI has only clients).

It mirrors the native API of text-generation-inference 3.x as published in its OpenAPI
document and router (`router/src/server.rs`, `router/src/lib.rs`; design/PROTOCOLS.md A2):
- `POST /generate_stream`: SSE `data:` events (with or without a space after `data:`,
  `--no-space`), keep-alive comment lines, each a StreamResponse
  `{index, token{id,text,logprob,special}, generated_text, details}` where
  `generated_text` and `details{finish_reason,generated_tokens,seed,input_length}` are
  non-null only on the last event; an error during the stream is an event
  `{error, error_type}`;
- `POST /generate`: `{generated_text, details}`;
- `POST /v1/chat/completions` (the Messages API) with `stream: true`: OpenAI chat chunks
  (`delta.content`, a last chunk with `finish_reason`, `usage` with
  `stream_options.include_usage`), then `data: [DONE]`; the conversation is rendered with
  a fixed template (`<|role|>content` lines, then `<|assistant|>`), as TGI renders with the
  model's;
- `GET /info`, `GET /health` (200 empty / 503 `healthcheck`), `GET /metrics`;
- errors `{error, error_type}`: 422 `validation`, 424 `generation`, 429 `overloaded` when
  more than `max_concurrent_requests` requests are in flight.

The "model" is a seeded token generator; prompt directives inject faults:
`[[stall:N]]` (stop after N tokens), `[[fail:N]]` (drop the connection after N tokens),
`[[error:N]]` (an in-stream `generation` error after N tokens), `[[big:K]]` (each token K
bytes long, for large outputs), `[[eos:N]]` (end with `eos_token` after N tokens).

    python -m test_harness.engines.tgi_server --port 8080 [--max-concurrent 4] [--no-space]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
from collections import deque
from typing import Any

from aiohttp import web

VERSION = "3.3.4"
MAX_TOTAL_TOKENS = 4096
MAX_INPUT_TOKENS = 4000
DIRECTIVE = re.compile(r"\[\[(stall|fail|error|big|eos):(\d+)\]\]")
WORDS = ["hi", "tok", "gen", "text", "flow", "seq", "bit", "run"]
EOS = {"id": 2, "text": "</s>", "logprob": -0.1, "special": True}


def _error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


class TGIServer:
    def __init__(self, max_concurrent: int, space: bool) -> None:
        self.max_concurrent = max_concurrent
        self.prefix = b"data: " if space else b"data:"
        self.in_flight = 0
        self.seen_traceparents: deque[str] = deque(maxlen=64)

    def validate(self, body: Any) -> tuple[str, dict[str, Any]] | web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            return _error(422, "Input validation error: `inputs` must be a string", "validation")
        params = body.get("parameters") or {}
        inputs = body["inputs"]
        if not inputs:
            return _error(422, "Input validation error: `inputs` cannot be empty", "validation")
        max_new = params.get("max_new_tokens") or 20
        if not isinstance(max_new, int) or max_new < 1:
            return _error(
                422,
                "Input validation error: `max_new_tokens` must be strictly positive",
                "validation",
            )
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0 and params.get("do_sample", True):
            return _error(
                422, "Input validation error: `temperature` must be strictly positive", "validation"
            )
        input_length = len(inputs.encode())
        if input_length + max_new > MAX_TOTAL_TOKENS:
            return _error(
                422,
                f"Input validation error: `inputs` tokens + `max_new_tokens` "
                f"must be <= {MAX_TOTAL_TOKENS}. Given: {input_length} `inputs` "
                f"tokens and {max_new} `max_new_tokens`",
                "validation",
            )
        return inputs, {**params, "max_new_tokens": max_new, "input_length": input_length}

    def tokens(self, inputs: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict]:
        faults = {k: int(n) for k, n in DIRECTIVE.findall(inputs)}
        seed = params.get("seed")
        if seed is None:
            seed = random.getrandbits(63)
        rng = random.Random(
            int.from_bytes(hashlib.sha256(f"{seed}\x00{inputs}".encode()).digest()[:8], "big")
        )
        size = faults.get("big")
        out = []
        stop = params.get("stop") or []
        finish = "length"
        for i in range(params["max_new_tokens"]):
            if "eos" in faults and i >= faults["eos"]:
                out.append(dict(EOS))
                finish = "eos_token"
                break
            idx = rng.randrange(len(WORDS))
            text = (" " if i else "") + WORDS[idx]
            if size:
                text = (text * (size // len(text) + 1))[:size]
            out.append({"id": 1000 + idx, "text": text, "logprob": -1.0, "special": False})
            if text.strip() in stop:
                finish = "stop_sequence"
                break
        return out, {"finish_reason": finish, "seed": seed, "faults": faults}

    async def traceparents(self, request: web.Request) -> web.Response:
        """Test-only: the W3C `traceparent` headers of the latest requests (TGI continues
        them in its own OTLP traces)."""
        return web.json_response(list(self.seen_traceparents))

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        if "traceparent" in request.headers:
            self.seen_traceparents.append(request.headers["traceparent"])
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "Failed to deserialize the JSON body", "validation")
        checked = self.validate(body)
        if isinstance(checked, web.Response):
            return checked
        if self.in_flight >= self.max_concurrent:
            return _error(429, "Model is overloaded", "overloaded")
        inputs, params = checked
        tokens, meta = self.tokens(inputs, params)
        faults = meta["faults"]
        self.in_flight += 1
        try:
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
            )
            await response.prepare(request)
            await response.write(b":\n\n")  # a keep-alive comment, as axum sends
            text = ""
            for i, token in enumerate(tokens):
                if "stall" in faults and i >= faults["stall"]:
                    await self._until_disconnected(request)  # TGI stops when the client goes
                    return response
                if "fail" in faults and i >= faults["fail"]:
                    assert request.transport is not None
                    request.transport.abort()  # the engine dies mid-stream
                    return response
                if "error" in faults and i >= faults["error"]:
                    await self._event(
                        response,
                        {
                            "error": "Request failed during generation: injected",
                            "error_type": "generation",
                        },
                    )
                    return response
                if not token["special"]:
                    text += token["text"]
                last = i == len(tokens) - 1
                event = {
                    "index": i,
                    "token": token,
                    "top_tokens": None,
                    "generated_text": text if last else None,
                    "details": {
                        "finish_reason": meta["finish_reason"],
                        "generated_tokens": len(tokens),
                        "seed": meta["seed"],
                        "input_length": params["input_length"],
                    }
                    if last
                    else None,
                }
                await self._event(response, event)
                if i % 16 == 15:
                    await asyncio.sleep(0)
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1

    async def chat_stream(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(422, "Failed to deserialize the JSON body", "validation")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not body.get("stream"):
            return _error(422, "Input validation error: `messages` and `stream` are required",
                          "validation")  # fmt: skip
        inputs = "".join(f"<|{m.get('role')}|>{m.get('content')}\n" for m in messages)
        params = {
            "max_new_tokens": body.get("max_tokens") or 20, "seed": body.get("seed"),
            "stop": body.get("stop") or [], "input_length": len(inputs.encode()),
        }  # fmt: skip
        if self.in_flight >= self.max_concurrent:
            return _error(429, "Model is overloaded", "overloaded")
        tokens, meta = self.tokens(inputs + "<|assistant|>", params)
        self.in_flight += 1
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            head = {"object": "chat.completion.chunk", "id": "", "created": 0,
                    "model": "orchestratord/tgi-test-model",
                    "system_fingerprint": f"{VERSION}-native"}  # fmt: skip
            for i, token in enumerate(tokens):
                if "stall" in meta["faults"] and i >= meta["faults"]["stall"]:
                    await self._until_disconnected(request)
                    return response
                last = i == len(tokens) - 1
                delta = {"role": "assistant", "content": "" if token["special"] else token["text"]}
                choice = {"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": meta["finish_reason"] if last else None}  # fmt: skip
                await self._event(response, {**head, "choices": [choice], "usage": None})
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": params["input_length"],
                         "completion_tokens": len(tokens),
                         "total_tokens": params["input_length"] + len(tokens)}  # fmt: skip
                await self._event(response, {**head, "choices": [], "usage": usage})
            await response.write(self.prefix + b"[DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            self.in_flight -= 1

    async def _until_disconnected(self, request: web.Request) -> None:
        # aiohttp does not cancel a handler whose stream is already prepared, so watch the
        # transport (this is the engine's own work loop noticing the closed socket)
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    async def _event(self, response: web.StreamResponse, data: dict[str, Any]) -> None:
        await response.write(self.prefix + json.dumps(data).encode() + b"\n\n")

    async def generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        checked = self.validate(body)
        if isinstance(checked, web.Response):
            return checked
        inputs, params = checked
        tokens, meta = self.tokens(inputs, params)
        text = "".join(t["text"] for t in tokens if not t["special"])
        return web.json_response(
            {
                "generated_text": text,
                "details": {
                    "finish_reason": meta["finish_reason"],
                    "generated_tokens": len(tokens),
                    "seed": meta["seed"],
                    "prefill": [],
                    "tokens": tokens,
                },
            }
        )

    async def info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "model_id": "orchestratord/tgi-test-model",
                "model_sha": "0" * 40,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": self.max_concurrent,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": MAX_INPUT_TOKENS,
                "max_total_tokens": MAX_TOTAL_TOKENS,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": VERSION,
                "sha": None,
                "docker_label": None,
            }
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=f"tgi_queue_size 0\ntgi_batch_current_size {self.in_flight}\n")


def make_app(max_concurrent: int = 4, space: bool = True) -> web.Application:
    server = TGIServer(max_concurrent, space)
    app = web.Application()
    app.router.add_post("/generate_stream", server.generate_stream)
    app.router.add_post("/generate", server.generate)
    app.router.add_post("/v1/chat/completions", server.chat_stream)
    app.router.add_get("/info", server.info)
    app.router.add_get("/health", server.health)
    app.router.add_get("/metrics", server.metrics)
    app.router.add_get("/_test/traceparents", server.traceparents)
    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-concurrent", type=int, default=4)
    ap.add_argument("--no-space", action="store_true", help="frame events as `data:{...}`")
    args = ap.parse_args()
    web.run_app(
        make_app(args.max_concurrent, not args.no_space),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=lambda *_: print("ready", flush=True),
    )


if __name__ == "__main__":
    main()
