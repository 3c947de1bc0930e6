"""Hugging Face text-generation-inference, over its native API (design/PROTOCOLS.md A2).

`POST /generate_stream` with `inputs` and `parameters`; SSE events carry
`token{id,text,logprob,special}`; the last has `generated_text` and
`details{finish_reason,generated_tokens,seed,input_length}`; `data:` may come with or
without a space. Errors are `{"error","error_type"}`: 422 validation, 424 generation,
429 overloaded — in the HTTP status before the stream, in an event after it started.
Conversations go to TGI's Messages API (`POST /v1/chat/completions`, OpenAI chat chunks,
rendered with the model's chat template by TGI).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from orchestrator_core.errors import ErrorCode
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
from worker_adapters.openai_http import CHAT_PATH, OpenAIEvents
from worker_adapters.sse import Oversized

ENGINE = "tgi"
_FINISH: dict[str, FinishReason] = {
    "length": "length",
    "eos_token": "stop",
    "stop_sequence": "stop",
}
_ERROR_TYPES = {"overloaded": ErrorCode.REPLICA_EXHAUSTED, "validation": ErrorCode.INVALID_PARAMS}


class TGIAdapter(HttpEngine):
    engine = ENGINE

    def _oversized(self, data: Oversized) -> Any:
        # TGI's last event repeats the whole text in `generated_text`; for a large output we
        # never hold it: only the event's tail is kept, and `details` comes last.
        at = data.rfind('"details":')
        if at < 0:
            raise self.ended_early()
        event: dict[str, Any] = json.loads("{" + data[at:])
        token_at = data.head.find('"token":')
        if token_at >= 0:
            start = data.head.index("{", token_at)
            event["token"] = json.JSONDecoder().raw_decode(data.head, start)[0]
        return event

    async def ready(self) -> bool:
        return await self._probe("/health")

    async def stats(self) -> EngineStats:
        found = await self._metrics("tgi_batch_current_size")
        busy = found.get("tgi_batch_current_size")
        return EngineStats(None if busy is None else int(busy), None)

    async def capabilities(self) -> Capabilities:
        info = await self._get_json("/info")
        return Capabilities(
            engine=ENGINE,
            engine_version=f"tgi {info.get('version', 'unknown')}",
            slots=int(info.get("max_concurrent_requests") or 1),
            ctx_per_slot=info.get("max_total_tokens"),
            model=str(info.get("model_id", "")),
            model_digest=str(info.get("model_sha") or ""),
        )

    def _body(self, req: GenerateRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": req.max_tokens,
            "details": True,
            **req.sampling(),
        }
        # TGI samples only when asked; temperature 0 means greedy there too.
        params["do_sample"] = req.temperature != 0 and (
            req.seed is not None
            or any(v is not None for v in (req.temperature, req.top_p, req.top_k))
        )
        if params["do_sample"] is False:
            params.pop("temperature", None)
        if req.stop:
            params["stop"] = list(req.stop)
        return {"inputs": req.prompt, "parameters": params}

    def _chat_body(self, req: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": "tgi", "messages": req.chat(), "max_tokens": req.max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, **req.sampling(),
        }  # fmt: skip
        if req.stop:
            body["stop"] = list(req.stop)
        return body

    def _call(self, request: GenerateRequest) -> Call:
        if request.messages:
            return Call(CHAT_PATH, self._chat_body(request), OpenAIEvents(self.ended_early))
        return Call("/generate_stream", self._body(request), GenerateEvents(self.ended_early))


class GenerateEvents:
    """TGI's `/generate_stream` events: a `token` each (special ones skipped), the last
    with `details`; an error event after the stream started carries `error_type`."""

    __slots__ = ("_ended_early",)

    def __init__(self, ended_early: Callable[[], AdapterError]) -> None:
        self._ended_early = ended_early

    def feed(self, event: Any) -> list[StreamEvent]:
        if "error" in event:
            code = _ERROR_TYPES.get(event.get("error_type", ""), ErrorCode.WORKER_RESET)
            raise AdapterError(code, f"tgi: {event['error']}", engine=ENGINE)
        events: list[StreamEvent] = []
        token = event.get("token") or {}
        if token.get("text") and not token.get("special"):
            events.append(Token(token["text"], 1, (int(token.get("id", 0)),)))
        details = event.get("details")
        if details is not None:
            events.append(End(
                _FINISH.get(details.get("finish_reason", ""), "stop"),
                int(details.get("generated_tokens", 0)),
                details.get("input_length"),
            ))  # fmt: skip
        return events

    def end(self) -> End:
        raise self._ended_early()
