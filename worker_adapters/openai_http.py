"""OpenAI-compatible engines: vLLM, SGLang, llama.cpp's `/v1` routes, TGI's Messages API.

`POST /v1/completions` (or `/v1/chat/completions` for conversations, and for plain prompts
with `chat=True`) with `stream: true` and `stream_options.include_usage`; chunks carry
`choices[0].text` (or `.delta.content`) and a `finish_reason`; usage arrives in a final
chunk; the stream ends with `data: [DONE]`. `OpenAIEvents` maps such a stream to our
events for every adapter that speaks it. vLLM's `priority` is sent only where the pool says
the engine runs priority scheduling (vLLM rejects a non-zero priority otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worker_adapters.base import (
    AdapterError,
    Capabilities,
    End,
    EngineStats,
    FinishReason,
    GenerateRequest,
    StreamEvent,
    Token,
)
from worker_adapters.http_engine import Call, HttpEngine

ENGINE = "openai"
CHAT_PATH = "/v1/chat/completions"


class OpenAIEvents:
    """OpenAI completion or chat chunks as Tokens, and one End once the stream is over
    (usage comes in a chunk after the `finish_reason`). A stream cut short, or an error
    chunk, raises `ended_early()`."""

    __slots__ = ("_ended_early", "_finish", "_sent", "_usage")

    def __init__(self, ended_early: Callable[[], AdapterError]) -> None:
        self._ended_early = ended_early
        self._finish: FinishReason | None = None
        self._sent = 0
        self._usage: dict[str, Any] = {}

    def feed(self, chunk: Any) -> list[StreamEvent]:
        if "error" in chunk:
            raise self._ended_early()
        tokens: list[StreamEvent] = []
        for choice in chunk.get("choices") or ():
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content")
            if text:
                self._sent += 1
                tokens.append(Token(text))
            if choice.get("finish_reason"):
                self._finish = "length" if choice["finish_reason"] == "length" else "stop"
        self._usage = chunk.get("usage") or self._usage
        return tokens

    def end(self) -> End:
        if self._finish is None:  # [DONE] (or the end) without a finish_reason: cut short
            raise self._ended_early()
        usage = self._usage
        return End(
            self._finish, int(usage.get("completion_tokens", self._sent)),
            usage.get("prompt_tokens"),
        )  # fmt: skip


class OpenAIAdapter(HttpEngine):
    engine = ENGINE

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        chat: bool = False,
        api_key: str | None = None,
        slots: int = 8,
        send_priority: bool = False,
        extra_params: Mapping[str, Any] | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(base_url, headers=headers)
        self.model = model
        self.chat = chat
        self.slots = slots
        self.send_priority = send_priority
        self.extra_params = dict(extra_params or {})

    async def ready(self) -> bool:
        return await self._probe("/v1/models")

    async def stats(self) -> EngineStats:
        # vLLM's names; other OpenAI-compatible servers simply do not have them
        found = await self._metrics("vllm:num_requests_running", "vllm:kv_cache_usage_perc")
        busy = found.get("vllm:num_requests_running")
        return EngineStats(
            None if busy is None else int(busy), found.get("vllm:kv_cache_usage_perc")
        )

    async def capabilities(self) -> Capabilities:
        models = (await self._get_json("/v1/models")).get("data") or [{}]
        entry = next((m for m in models if m.get("id") == self.model), models[0])
        # vLLM: max_model_len; llama.cpp: meta.n_ctx_train
        ctx = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx_train")
        try:
            version = (
                f"{entry.get('owned_by', 'openai')} {(await self._get_json('/version'))['version']}"
            )
        except (AdapterError, KeyError, TypeError):
            version = str(entry.get("owned_by") or "openai-compatible")
        return Capabilities(
            ENGINE,
            version,
            self.slots,
            int(ctx) if ctx else None,
            str(entry.get("id") or self.model),
        )

    def _body(self, req: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_params,
            "model": self.model,
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if req.messages:
            body["messages"] = req.chat()
        elif self.chat:
            body["messages"] = [{"role": "user", "content": req.prompt}]
        else:
            body["prompt"] = req.prompt
        body.update(req.sampling())
        if req.stop:
            body["stop"] = list(req.stop)
        if self.send_priority and req.priority is not None:
            body["priority"] = req.priority
        return body

    def _call(self, request: GenerateRequest) -> Call:
        path = CHAT_PATH if request.messages or self.chat else "/v1/completions"
        return Call(path, self._body(request), OpenAIEvents(self.ended_early))
