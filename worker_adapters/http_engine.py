"""What every HTTP streaming engine adapter shares: one client session whose connections
are reused where the engine keeps them alive, JSON probes, and SSE-over-POST with failures
classified into the shared taxonomy. Engine modules add only their protocol: request body
and event mapping.

A pooled connection the engine closed while it sat idle shows as "server disconnected" or
a failed write before any response byte: such a request is sent once more, on another
connection (the engine never answered it). llama-server closes every connection after a
stream although it advertises keep-alive: its own adapter does not pool (`keep_alive=False`);
an OpenAI-compatible pool in front of it relies on the resend. A request to a replica that
was stopped meanwhile (its session closed) is a connection failure, like any other."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import AdapterError
from worker_adapters.http_errors import CONNECTION_ERRORS, connection_error, status_error
from worker_adapters.sse import Oversized, sse_data

DONE = b"[DONE]"
JSON = {"Content-Type": "application/json"}
#: Tries of a request whose pooled connection turns out closed before the engine answered.
_STALE_TRIES = 2


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
        self._probe_timeout = aiohttp.ClientTimeout(total=probe_timeout_s)
        connector = (
            aiohttp.TCPConnector(limit=0, keepalive_timeout=4)  # under uvicorn's 5 s idle close
            if keep_alive
            else aiohttp.TCPConnector(limit=0, force_close=True)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            headers=dict(headers or {}),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _get_json(self, path: str) -> Any:
        try:
            async with self._session.get(self.base_url + path, timeout=self._probe_timeout) as r:
                body = await r.read()
                if r.status != 200:
                    raise status_error(r.status, body, self.engine)
                return orjson.loads(body)
        except CONNECTION_ERRORS as e:
            raise connection_error(e, self.engine) from e

    async def _probe(self, path: str) -> bool:
        """Whether `GET path` answers 200 (readiness)."""
        try:
            async with self._session.get(self.base_url + path, timeout=self._probe_timeout) as r:
                return r.status == 200
        except (*CONNECTION_ERRORS, TimeoutError):
            return False

    async def _metrics(self, *names: str) -> dict[str, float]:
        """Values of unlabelled (or summed labelled) samples from the engine's Prometheus
        `/metrics`; names it does not export are absent."""
        try:
            async with self._session.get(
                self.base_url + "/metrics", timeout=self._probe_timeout
            ) as r:
                if r.status != 200:
                    return {}
                text = await r.text()
        except (*CONNECTION_ERRORS, TimeoutError):
            return {}
        found: dict[str, float] = {}
        for line in text.splitlines():
            name, _, rest = line.partition(" ")
            base = name.split("{", 1)[0]
            if base in names:
                try:
                    found[base] = found.get(base, 0.0) + float(rest.split()[0])
                except (ValueError, IndexError):
                    continue
        return found

    async def _post(
        self, path: str, body: bytes, traceparent: str | None = None
    ) -> aiohttp.ClientResponse:
        """POST, sending once more when a pooled connection was closed under us."""
        headers = JSON if traceparent is None else {**JSON, "traceparent": traceparent}
        for attempt in range(1, _STALE_TRIES + 1):
            if self._session.closed:  # the replica was stopped while this task waited
                raise aiohttp.ClientConnectionError(f"{self.engine} replica was stopped")
            try:
                return await self._session.post(self.base_url + path, data=body, headers=headers)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                # the pooled connection was closed under us: the request was not answered
                if attempt == _STALE_TRIES:
                    raise
        raise AssertionError("unreachable")

    async def _post_sse(
        self, path: str, body: Mapping[str, Any], traceparent: str | None = None
    ) -> AsyncIterator[Any]:
        """POST and yield each SSE event's JSON until `[DONE]` or the end of the body.
        HTTP errors, dropped connections and malformed events raise AdapterError."""
        try:
            async with await self._post(path, orjson.dumps(body), traceparent) as r:
                if r.status != 200:
                    raise status_error(r.status, await r.read(), self.engine)
                async for data in sse_data(r.content.iter_any()):
                    if data == DONE:
                        return
                    yield self._decode(data)
        except CONNECTION_ERRORS as e:
            raise connection_error(e, self.engine) from e
        except orjson.JSONDecodeError as e:
            raise AdapterError(
                ErrorCode.WORKER_RESET,
                f"{self.engine} sent a malformed event: {e}",
                engine=self.engine,
            ) from e

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
