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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from uuid_utils import uuid7

from orchestratord import agent_models as agent_api
from orchestratord import api_models as api
from orchestratord import batch_models as bat
from orchestratord.client.failover import Endpoints

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
    """`base_url`: one daemon, or several sharing a store (`"http://a:8080,http://b:8080"`
    or a list): requests go to the one that leads, following `NOT_LEADER` and moving past
    daemons that do not answer for up to `failover_s`; a stream resumes on the new leader
    where it broke (`Last-Event-ID`), and a submission retried there is not admitted twice
    (the SDK names the task)."""

    def __init__(
        self,
        base_url: str | Sequence[str] = DEFAULT_URL,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        failover_s: float = 60.0,
    ) -> None:
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._endpoints = Endpoints(base_url, failover_s)
        self._http = httpx.AsyncClient(
            headers=all_headers, timeout=httpx.Timeout(timeout, read=None)
        )

    @property
    def base_url(self) -> str:
        """The daemon requests go to now."""
        return self._endpoints.current

    async def __aenter__(self) -> OrchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        endpoints = self._endpoints
        while True:
            try:
                response = await self._http.request(method, endpoints.current + path, **kw)
            except httpx.TransportError as e:
                if await endpoints.move_on():
                    continue
                where = self.base_url
                raise DaemonUnreachable(f"cannot reach orchestratord at {where}: {e}") from e
            if response.status_code >= 400:
                error = _error_from(response)
                if error.code == "NOT_LEADER" and await endpoints.move_on(_leader(response)):
                    continue
                raise error
            endpoints.answered()
            return response

    async def submit(self, request: api.TaskRequest | Mapping[str, Any]) -> api.AdmissionResponse:
        body = (
            request.model_dump(mode="json", exclude_none=True)
            if isinstance(request, api.TaskRequest)
            else dict(request)
        )
        if self._endpoints.several and not body.get("task_id"):
            body["task_id"] = str(uuid7())  # a retry on the next leader is the same task
        try:
            response = await self._request("POST", "/v1/tasks", json=body)
        except ClientError as e:
            if not (self._endpoints.several and _already_admitted(e)):
                raise
            # an earlier attempt was admitted (its answer was lost with its daemon)
            status = await self.status(body["task_id"])
            return api.AdmissionResponse(
                task_id=status.task_id, queue_position=status.queue_position or 0,
                predicted_start_ms=0, stream_url=f"/v1/tasks/{status.task_id}/stream",
            )  # fmt: skip
        return api.AdmissionResponse.model_validate_json(response.content)

    async def tasks(
        self,
        *,
        pool_id: str | None = None,
        tenant: str | None = None,
        states: Sequence[str] = (),
        limit: int | None = None,
    ) -> api.TaskList:
        """The tasks this key may see, oldest first: queued and running ones unless
        `states` names others (`["all"]`: every state)."""
        params: dict[str, str] = {}
        if pool_id is not None:
            params["pool_id"] = pool_id
        if tenant is not None:
            params["tenant"] = tenant
        if states:
            params["state"] = ",".join(states)
        if limit is not None:
            params["limit"] = str(limit)
        response = await self._request("GET", "/v1/tasks", params=params)
        return api.TaskList.model_validate_json(response.content)

    async def status(self, task_id: str) -> api.TaskStatus:
        response = await self._request("GET", f"/v1/tasks/{task_id}")
        return api.TaskStatus.model_validate_json(response.content)

    async def cancel(self, task_id: str) -> None:
        await self._request("POST", f"/v1/tasks/{task_id}/cancel")

    async def stream(
        self, task_id: str, last_event_id: int | None = None
    ) -> AsyncGenerator[Event, None]:
        """The task's events until `end` or `error` (resuming after `last_event_id`); with
        several daemons, a stream that breaks or whose daemon steps down resumes on the
        leader after the last event received."""
        endpoints = self._endpoints
        last = last_event_id
        while True:
            try:
                async for event in self._stream_from(task_id, last):
                    moved = event.event == "error" and event.data.get("code") == "NOT_LEADER"
                    if moved and endpoints.several:
                        raise _SteppedDown(event.data.get("leader_url"))
                    last = event.id if event.id is not None else last
                    yield event
                return
            except _SteppedDown as e:
                if not await endpoints.move_on(e.leader):
                    raise DaemonUnreachable(f"no daemon leads at {endpoints.urls}") from None
            except httpx.TransportError as e:
                if not await endpoints.move_on():
                    raise DaemonUnreachable(f"stream from {self.base_url} broke: {e}") from e

    async def _stream_from(self, task_id: str, last: int | None) -> AsyncIterator[Event]:
        headers = {} if last is None else {"Last-Event-ID": str(last)}
        url = f"{self._endpoints.current}/v1/tasks/{task_id}/stream"
        async with aconnect_sse(self._http, "GET", url, headers=headers) as source:
            response = source.response
            if response.status_code >= 400:
                await response.aread()
                error = _error_from(response)
                if error.code == "NOT_LEADER":
                    raise _SteppedDown(_leader(response))
                raise error
            self._endpoints.answered()
            async for sse in source.aiter_sse():
                if not sse.data:  # a block cut short by a broken connection: no event
                    continue
                yield Event(sse.event, int(sse.id) if sse.id else None, json.loads(sse.data))

    async def pools(self) -> list[api.PoolInfo]:
        response = await self._request("GET", "/v1/pools")
        return [api.PoolInfo.model_validate(p) for p in response.json()["pools"]]

    async def agents(self) -> list[agent_api.AgentInfo]:
        response = await self._request("GET", "/v1/agents")
        return agent_api.AgentList.model_validate_json(response.content).agents

    async def stop_agent(self, agent_id: str) -> agent_api.AgentAccepted:
        response = await self._request("POST", f"/v1/agents/{agent_id}/stop")
        return agent_api.AgentAccepted.model_validate_json(response.content)

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


class _SteppedDown(Exception):
    """The daemon streaming to us does not lead (any more)."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader


def _leader(response: httpx.Response) -> str | None:
    leader: str | None = response.headers.get(api.LEADER_HEADER)
    return leader


def _already_admitted(error: ClientError) -> bool:
    # the only refusal of a task id the SDK made itself (a fresh UUID): it is taken
    return error.code == "INVALID_PARAMS" and error.envelope.field == "task_id"


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
