"""The async Python SDK for the orchestratord HTTP API.

Imports only the API models, never server internals, so it can ship on its own.

    async with OrchClient("http://127.0.0.1:8080") as client:
        admitted = await client.submit({"model": "tiny-llama", "prompt": "hello"})
        async for event in client.stream(admitted.task_id):
            if event.event == "token":
                print(event.data["t"], end="")
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse

from orchestratord import api_models as api
from orchestratord import batch_models as bat

DEFAULT_URL = "http://127.0.0.1:8080"


class ClientError(Exception):
    """The daemon answered with an error envelope."""

    def __init__(
        self, status: int, envelope: api.ErrorEnvelope, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{envelope.code}: {envelope.message}")
        self.status = status
        self.envelope = envelope
        self.headers = dict(headers or {})

    @property
    def code(self) -> str:
        return self.envelope.code


class Backpressure(ClientError):
    """429 (queue full) or 503 (pool unavailable): retry after `retry_after_s`."""

    @property
    def retry_after_s(self) -> float:
        try:
            return max(float(self.headers.get("retry-after", "1")), 0.0)
        except ValueError:
            return 1.0


class DaemonUnreachable(Exception):
    """No daemon answered at the URL."""


@dataclass(frozen=True, slots=True)
class Event:
    """One SSE event of a task stream."""

    event: str
    id: int | None
    data: dict[str, Any]


class OrchClient:
    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
    ) -> None:
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=all_headers,
            timeout=httpx.Timeout(timeout, read=None),
        )  # fmt: skip
        self.base_url = base_url

    async def __aenter__(self) -> OrchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise DaemonUnreachable(f"cannot reach orchestratord at {self.base_url}: {e}") from e
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    async def submit(self, request: api.TaskRequest | Mapping[str, Any]) -> api.AdmissionResponse:
        body = (
            request.model_dump(mode="json", exclude_none=True)
            if isinstance(request, api.TaskRequest)
            else dict(request)
        )
        response = await self._request("POST", "/v1/tasks", json=body)
        return api.AdmissionResponse.model_validate_json(response.content)

    async def status(self, task_id: str) -> api.TaskStatus:
        response = await self._request("GET", f"/v1/tasks/{task_id}")
        return api.TaskStatus.model_validate_json(response.content)

    async def cancel(self, task_id: str) -> None:
        await self._request("POST", f"/v1/tasks/{task_id}/cancel")

    async def stream(self, task_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The task's events until `end` or `error` (resuming after `last_event_id`)."""
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        try:
            async with aconnect_sse(
                self._http, "GET", f"/v1/tasks/{task_id}/stream", headers=headers
            ) as source:
                if source.response.status_code >= 400:
                    await source.response.aread()
                    raise _error_from(source.response)
                async for sse in source.aiter_sse():
                    yield Event(sse.event, int(sse.id) if sse.id else None, json.loads(sse.data))
        except httpx.TransportError as e:
            raise DaemonUnreachable(f"stream from {self.base_url} broke: {e}") from e

    async def pools(self) -> list[api.PoolInfo]:
        response = await self._request("GET", "/v1/pools")
        return [api.PoolInfo.model_validate(p) for p in response.json()["pools"]]

    async def agents(self) -> list[api.AgentInfo]:
        response = await self._request("GET", "/v1/agents")
        return api.AgentList.model_validate_json(response.content).agents

    async def stop_agent(self, agent_id: str) -> api.AgentAccepted:
        response = await self._request("POST", f"/v1/agents/{agent_id}/stop")
        return api.AgentAccepted.model_validate_json(response.content)

    async def pool(self, pool_id: str) -> api.PoolInfo:
        response = await self._request("GET", f"/v1/pools/{pool_id}")
        return api.PoolInfo.model_validate_json(response.content)

    async def drain(self, pool_id: str, deadline_ms: int = 30_000) -> api.Accepted:
        response = await self._request(
            "POST", f"/v1/pools/{pool_id}/drain", json={"deadline_ms": deadline_ms}
        )
        return api.Accepted.model_validate_json(response.content)

    async def resume(self, pool_id: str) -> api.Accepted:
        response = await self._request("POST", f"/v1/pools/{pool_id}/resume")
        return api.Accepted.model_validate_json(response.content)

    async def reload(self, pool_id: str, model: str, *, resume: bool = False) -> api.Accepted:
        body = {"model": model, "resume": resume}
        response = await self._request("POST", f"/v1/pools/{pool_id}/reload", json=body)
        return api.Accepted.model_validate_json(response.content)

    # -- API keys (admin) ----------------------------------------------------------------

    async def create_key(self, spec: api.KeyCreate) -> api.KeyCreated:
        body = spec.model_dump(mode="json", exclude_none=True)
        response = await self._request("POST", "/v1/keys", json=body)
        return api.KeyCreated.model_validate_json(response.content)

    async def keys(self) -> list[api.KeyInfo]:
        response = await self._request("GET", "/v1/keys")
        return api.KeyList.model_validate_json(response.content).keys

    async def revoke_key(self, key_id: str) -> None:
        await self._request("DELETE", f"/v1/keys/{key_id}")

    async def capabilities(self) -> api.CapabilitiesResponse:
        response = await self._request("GET", "/v1/capabilities")
        return api.CapabilitiesResponse.model_validate_json(response.content)

    # -- the Batch API -----------------------------------------------------------------

    async def upload_batch_file(self, content: bytes, filename: str) -> bat.FileObject:
        """Upload a batch input file (JSONL of OpenAI batch lines)."""
        response = await self._request(
            "POST", "/v1/files", data={"purpose": "batch"},
            files={"file": (filename, content, "application/jsonl")},
        )  # fmt: skip
        return bat.FileObject.model_validate_json(response.content)

    async def create_batch(
        self, file_id: str, endpoint: str, metadata: Mapping[str, str] | None = None
    ) -> bat.Batch:
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": "24h"}
        if metadata:
            body["metadata"] = dict(metadata)  # type: ignore[assignment]
        response = await self._request("POST", "/v1/batches", json=body)
        return bat.Batch.model_validate_json(response.content)

    async def batch(self, batch_id: str) -> bat.Batch:
        response = await self._request("GET", f"/v1/batches/{batch_id}")
        return bat.Batch.model_validate_json(response.content)

    async def batches(self, after: str | None = None, limit: int = 20) -> bat.BatchList:
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        response = await self._request("GET", "/v1/batches", params=params)
        return bat.BatchList.model_validate_json(response.content)

    async def cancel_batch(self, batch_id: str) -> bat.Batch:
        response = await self._request("POST", f"/v1/batches/{batch_id}/cancel")
        return bat.Batch.model_validate_json(response.content)

    async def file_content(self, file_id: str) -> bytes:
        return (await self._request("GET", f"/v1/files/{file_id}/content")).content


def _error_from(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):  # OpenAI's shape
            error = body["error"]
            body = {"code": error.get("code") or "INTERNAL", "message": error.get("message", ""),
                    "field": error.get("param")}  # fmt: skip
        envelope = api.ErrorEnvelope.model_validate(body)
    except ValueError:
        envelope = api.ErrorEnvelope(
            code="INTERNAL", message=response.text[:200] or f"HTTP {response.status_code}"
        )
    cls = Backpressure if response.status_code in (429, 503) else ClientError
    return cls(response.status_code, envelope, response.headers)
