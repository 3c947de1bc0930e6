"""llama.cpp `llama-server`, over its native HTTP API (`POST /completion`, streaming).

Protocol notes (design/PROTOCOLS.md A1, ENGINES.md):
- stream events are `data: {json}` with no terminator; the last has `stop: true`,
  `stop_type` (eos | word | limit), `tokens_predicted`, `tokens_evaluated`, `timings`;
- the server closes the TCP connection after a streamed response although it advertises
  keep-alive, so every stream uses a fresh connection (`force_close`);
- cancel = close the connection: generation stops and the slot frees at once;
- readiness is `GET /health` (503 while loading, 200 when ready); slots and context come
  from `/props` and `/slots`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import (
    AdapterError,
    Capabilities,
    End,
    FinishReason,
    GenerateRequest,
    StreamEvent,
    Token,
)
from worker_adapters.http_errors import CONNECTION_ERRORS, connection_error, status_error
from worker_adapters.sse import sse_data

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


class LlamaCppAdapter:
    """One llama-server endpoint."""

    engine = ENGINE

    def __init__(
        self,
        base_url: str,
        *,
        model_path: str | None = None,
        engine_version: str | None = None,
        extra_params: Mapping[str, Any] | None = None,
        probe_timeout_s: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_path = model_path
        self._version = engine_version
        self.extra_params = dict(extra_params or {})
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        # force_close: llama-server drops the connection after each streamed response.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _get_json(self, path: str) -> Any:
        async with self._session.get(self.base_url + path, timeout=self._probe_timeout) as r:
            body = await r.read()
            if r.status != 200:
                raise status_error(r.status, body, ENGINE)
            return json.loads(body)

    async def ready(self) -> bool:
        try:
            async with self._session.get(
                self.base_url + "/health", timeout=self._probe_timeout
            ) as r:
                return r.status == 200
        except (*CONNECTION_ERRORS, TimeoutError):
            return False

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

    async def busy_slots(self) -> int:
        """Slots the engine itself reports as processing (for drift checks and metrics)."""
        return sum(1 for s in await self._get_json("/slots") if s.get("is_processing"))

    def _body(self, req: GenerateRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_params,
            "prompt": req.prompt,
            "n_predict": req.max_tokens,
            "stream": True,
            "cache_prompt": req.cache_prompt,
            "return_tokens": True,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        for key in ("temperature", "top_p", "top_k"):
            value = getattr(req, key)
            if value is not None:
                body[key] = value
        if req.stop:
            body["stop"] = list(req.stop)
        return body

    async def stream(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        try:
            async with self._session.post(
                self.base_url + "/completion", json=self._body(request)
            ) as r:
                if r.status != 200:
                    raise status_error(r.status, await r.read(), ENGINE)
                predicted = 0  # tokens counted so far, from the engine's own tally
                async for data in sse_data(r.content):
                    event = json.loads(data)
                    if "error" in event:  # an error after the stream started
                        err = event["error"]
                        code = err.get("code", 500) if isinstance(err, dict) else 500
                        raise status_error(int(code), data.encode(), ENGINE)
                    # One event may carry several tokens (incomplete UTF-8 is held back), so
                    # count by `tokens_predicted`, not by events.
                    total = int(event.get("tokens_predicted", predicted + 1))
                    content = event.get("content", "")
                    if content:
                        yield Token(
                            content, max(total - predicted, 0), tuple(event.get("tokens") or ())
                        )
                        predicted = total
                    if event.get("stop"):
                        reason = _FINISH.get(event.get("stop_type", ""), "stop")
                        yield End(reason, total, event.get("tokens_evaluated"))
                        return
            raise AdapterError(
                ErrorCode.WORKER_RESET, "llama-server ended the stream early", engine=ENGINE
            )
        except CONNECTION_ERRORS as e:
            raise connection_error(e, ENGINE) from e
        except json.JSONDecodeError as e:
            raise AdapterError(
                ErrorCode.WORKER_RESET, f"llama-server sent a malformed event: {e}", engine=ENGINE
            ) from e
