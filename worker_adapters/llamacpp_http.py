"""llama.cpp `llama-server`, over its native HTTP API (`POST /completion`, streaming).

Protocol notes (design/PROTOCOLS.md A1, ENGINES.md):
- stream events are `data: {json}` with no terminator; the last has `stop: true`,
  `stop_type` (eos | word | limit), `tokens_predicted`, `tokens_evaluated`, `timings`;
- the server closes the TCP connection after a streamed response although it advertises
  keep-alive, so its connections are never reused (`keep_alive=False`: the client opens
  the next one ahead instead);
- cancel = close the connection: generation stops and the slot frees at once;
- `id_slot` runs a request on a chosen slot (the one whose prompt cache holds its prefix);
  the last event's `timings` tell how many prompt tokens came from that cache (`cache_n`)
  and how long the rest took (`prompt_n`, `prompt_ms`);
- readiness is `GET /health` (503 while loading, 200 when ready); slots and context come
  from `/props` and `/slots`;
- conversations go to its OpenAI chat route (`/v1/chat/completions`), which renders them
  with the model's own chat template (llama.cpp's default where the model has none) and
  takes the same native extras (`cache_prompt`, `logit_bias`, ...); it gives no token ids.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
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
from worker_adapters.http_errors import status_error
from worker_adapters.openai_http import CHAT_PATH, OpenAIEvents

ENGINE = "llamacpp"
_FINISH: dict[str, FinishReason] = {"limit": "length", "eos": "stop", "word": "stop"}


@lru_cache(maxsize=32)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def model_digest(path: str | Path) -> str:
    """sha256 of a model file, cached per (path, size, mtime); "" when it is not a local
    file (an attached engine's model may live on another host)."""
    p = Path(path)
    if not p.is_file():
        return ""
    st = p.stat()
    return _file_digest(str(p), st.st_size, st.st_mtime_ns)


class LlamaCppAdapter(HttpEngine):
    """One llama-server endpoint."""

    engine = ENGINE

    def __init__(
        self,
        base_url: str,
        *,
        model_path: str | None = None,
        engine_version: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(base_url, keep_alive=False)
        self.model_path = model_path
        self._version = engine_version
        self.extra_params = dict(extra_params or {})

    async def ready(self) -> bool:
        return await self._probe("/health")

    async def capabilities(self) -> Capabilities:
        props = await self._get_json("/props")
        slots = await self._get_json("/slots")
        version = self._version or f"llama.cpp {props.get('build_info', 'unknown')}"
        path = self.model_path or props.get("model_path", "")
        digest = await asyncio.to_thread(model_digest, path) if path else ""
        return Capabilities(
            engine=ENGINE,
            engine_version=version,
            slots=int(props.get("total_slots") or len(slots) or 1),
            ctx_per_slot=int(slots[0]["n_ctx"]) if slots else None,
            model=str(props.get("model_alias") or path),
            model_digest=digest,
        )

    async def stats(self) -> EngineStats:
        # older builds export kv_cache_usage_ratio; every build lists its slots
        kv = (await self._metrics("llamacpp:kv_cache_usage_ratio")).get(
            "llamacpp:kv_cache_usage_ratio"
        )
        try:
            busy: int | None = await self.busy_slots()
        except AdapterError:
            busy = None
        return EngineStats(busy, kv)

    async def busy_slots(self) -> int:
        """Slots the engine itself reports as processing (for drift checks and metrics)."""
        return sum(1 for s in await self._get_json("/slots") if s.get("is_processing"))

    def _body(self, req: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_params,
            "n_predict": req.max_tokens,
            "stream": True,
            "cache_prompt": req.cache_prompt,
        }
        if req.messages:
            body.update(messages=req.chat(), stream_options={"include_usage": True})
        else:
            body.update(prompt=req.prompt, return_tokens=True)
        body.update(req.sampling())
        if req.stop:
            body["stop"] = list(req.stop)
        if req.slot is not None:
            body["id_slot"] = req.slot
        return body

    def _call(self, request: GenerateRequest) -> Call:
        body = self._body(request)
        if request.messages:
            return Call(CHAT_PATH, body, OpenAIEvents(self.ended_early))
        return Call("/completion", body, CompletionEvents(self.ended_early))


class CompletionEvents:
    """llama-server's native `/completion` events: text and token ids per event, the last
    with `stop: true`, its `stop_type`, counts and timings."""

    __slots__ = ("_ended_early", "_predicted")

    def __init__(self, ended_early: Callable[[], AdapterError]) -> None:
        self._ended_early = ended_early
        self._predicted = 0  # tokens counted so far, from the engine's own tally

    def feed(self, event: Any) -> list[StreamEvent]:
        if "error" in event:  # an error after the stream started
            err = event["error"]
            code = err.get("code", 500) if isinstance(err, dict) else 500
            raise status_error(int(code), json.dumps(event).encode(), ENGINE)
        # One event may carry several tokens (incomplete UTF-8 is held back), so count
        # by `tokens_predicted`, not by events.
        total = int(event.get("tokens_predicted", self._predicted + 1))
        events: list[StreamEvent] = []
        if content := event.get("content", ""):
            count = max(total - self._predicted, 0)
            events.append(Token(content, count, tuple(event.get("tokens") or ())))
            self._predicted = total
        if event.get("stop"):
            reason = _FINISH.get(event.get("stop_type", ""), "stop")
            timings = event.get("timings") or {}
            events.append(End(
                reason, total, event.get("tokens_evaluated"), timings.get("cache_n"),
                timings.get("prompt_ms"), timings.get("prompt_n"),
            ))  # fmt: skip
        return events

    def end(self) -> End:
        raise self._ended_early()
