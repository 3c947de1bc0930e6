"""What every HTTP streaming engine adapter shares: one lean client whose connections are
reused where the engine keeps them alive (`http_client`), JSON probes, and SSE-over-POST
with failures classified into the shared taxonomy. Engine modules add only their protocol:
request body and event mapping.

llama-server closes every connection after a stream although it advertises keep-alive: its
own adapter does not pool (`keep_alive=False`); an OpenAI-compatible pool in front of it
relies on the client's resend of a request whose pooled connection was found closed. A
request to a replica that was stopped meanwhile (its client closed) is a connection
failure, like any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import AdapterError
from worker_adapters.http_client import (
    EngineConnectionError,
    HttpClient,
    NoAnswerInTime,
    Response,
)
from worker_adapters.http_errors import connection_error, status_error
from worker_adapters.sse import Oversized, SseDecoder

DONE = b"[DONE]"
JSON = {"Content-Type": "application/json"}


class HttpEngine:
    engine = "http"

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        probe_timeout_s: float = 2.0,
        keep_alive: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._probe_timeout_s = probe_timeout_s
        self._client = HttpClient(self.base_url, headers=headers, keep_alive=keep_alive)

    async def close(self) -> None:
        await self._client.close()

    async def _get(self, path: str) -> tuple[int, bytes]:
        """`GET path` within the probe timeout: (status, body). Raises
        EngineConnectionError, a timeout included."""
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                r = await self._client.request("GET", path)
                try:
                    return r.status, await r.read()
                finally:
                    self._client.release(r)
        except TimeoutError as e:
            raise NoAnswerInTime(f"GET {path}: none within {self._probe_timeout_s:g} s") from e

    async def _get_json(self, path: str) -> Any:
        try:
            status, body = await self._get(path)
        except EngineConnectionError as e:
            raise connection_error(e, self.engine) from e
        if status != 200:
            raise status_error(status, body, self.engine)
        return orjson.loads(body)

    async def _probe(self, path: str) -> bool:
        """Whether `GET path` answers 200 (readiness)."""
        try:
            return (await self._get(path))[0] == 200
        except EngineConnectionError:
            return False

    async def _metrics(self, *names: str) -> dict[str, float]:
        """Values of unlabelled (or summed labelled) samples from the engine's Prometheus
        `/metrics`; names it does not export are absent."""
        try:
            status, body = await self._get("/metrics")
        except EngineConnectionError:
            return {}
        if status != 200:
            return {}
        found: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            name, _, rest = line.partition(" ")
            base = name.split("{", 1)[0]
            if base in names:
                try:
                    found[base] = found.get(base, 0.0) + float(rest.split()[0])
                except (ValueError, IndexError):
                    continue
        return found

    async def _post_sse(
        self, path: str, body: Mapping[str, Any], traceparent: str | None = None
    ) -> AsyncIterator[Any]:
        """POST and yield each SSE event's JSON until `[DONE]` or the end of the body.
        HTTP errors, dropped connections and malformed events raise AdapterError."""
        headers = JSON if traceparent is None else {**JSON, "traceparent": traceparent}
        r: Response | None = None
        done = False
        try:
            r = await self._client.request("POST", path, orjson.dumps(body), headers)
            if r.status != 200:
                raise status_error(r.status, await r.read(), self.engine)
            decoder = SseDecoder()
            while chunk := await r.chunk():
                for data in decoder.feed(chunk):
                    if data == DONE:
                        done = True
                        return
                    yield self._decode(data)
            for data in decoder.end():
                if data != DONE:
                    yield self._decode(data)
        except EngineConnectionError as e:
            raise connection_error(e, self.engine) from e
        except orjson.JSONDecodeError as e:
            raise AdapterError(
                ErrorCode.WORKER_RESET,
                f"{self.engine} sent a malformed event: {e}",
                engine=self.engine,
            ) from e
        finally:
            if r is not None:
                self._client.release(r, read_to_end=done)

    def _decode(self, data: bytes | Oversized) -> Any:
        """One event's JSON. Engines that send events larger than the SSE bound override
        this to recover what they need from the kept tail."""
        if isinstance(data, Oversized):
            raise AdapterError(
                ErrorCode.WORKER_RESET,
                f"{self.engine} sent an event over the size bound",
                engine=self.engine,
            )
        return orjson.loads(data)

    def ended_early(self) -> AdapterError:
        return AdapterError(
            ErrorCode.WORKER_RESET, f"{self.engine} ended the stream early", engine=self.engine
        )
