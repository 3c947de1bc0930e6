"""The control plane's routes: pools and their health, drain, resume and reload, agents, API keys,
capabilities, liveness and readiness, Prometheus metrics, the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator_core.errors import ErrorCode
from orchestratord import agent_models as agent_api
from orchestratord import api_models as api
from orchestratord.api.http import json_response, parse
from orchestratord.keyring import KeyFileError, KeyRing
from orchestratord.service import Orchestrator, Refusal

T = TypeVar("T")


def _key_file(step: Callable[[], T]) -> T:
    """A key-file step; a daemon without a key file, or with one it cannot read, is a 409."""
    try:
        return step()
    except KeyFileError as e:
        raise Refusal(ErrorCode.CONFLICT, str(e)) from None


def routes(svc: Orchestrator, openapi: dict[str, Any], keys: KeyRing) -> list[web.RouteDef]:
    async def list_pools(request: web.Request) -> web.Response:
        return json_response(svc.pool_list())

    async def get_pool(request: web.Request) -> web.Response:
        return json_response(svc.pool_info(request.match_info["pool_id"]))

    async def pool_health(request: web.Request) -> web.Response:
        return json_response(svc.pool_health(request.match_info["pool_id"]))

    async def drain(request: web.Request) -> web.Response:
        pool_id = request.match_info["pool_id"]
        svc.pool(pool_id)  # 404 before the body is read
        body = await parse(request, api.DrainRequest, optional=True)
        svc.drain(pool_id, body.deadline_ms)
        return json_response(api.Accepted(pool_id=pool_id, status="draining"), 202)

    async def resume(request: web.Request) -> web.Response:
        pool_id = request.match_info["pool_id"]
        svc.resume(pool_id)
        return json_response(api.Accepted(pool_id=pool_id, status="resumed"), 202)

    async def reload(request: web.Request) -> web.Response:
        pool_id = request.match_info["pool_id"]
        svc.pool(pool_id)
        body = await parse(request, api.ReloadRequest)
        svc.reload(pool_id, body.model, resume=body.resume)
        return json_response(api.Accepted(pool_id=pool_id, status="reloading"), 202)

    async def create_key(request: web.Request) -> web.Response:
        spec = await parse(request, api.KeyCreate)
        info, key = _key_file(lambda: keys.create(spec))
        return json_response(api.KeyCreated(**info.model_dump(), key=key), 201)

    async def list_keys(request: web.Request) -> web.Response:
        _key_file(keys.writable)
        return json_response(api.KeyList(keys=keys.listing()))

    async def revoke_key(request: web.Request) -> web.Response:
        key_id = request.match_info["key_id"]
        if not _key_file(lambda: keys.revoke(key_id)):
            raise Refusal(ErrorCode.NOT_FOUND, f"no key {key_id!r}", field="key_id")
        return web.Response(status=204)

    async def agents(request: web.Request) -> web.Response:
        return json_response(svc.agent_list())

    async def stop_agent(request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        svc.stop_agent(agent_id)
        return json_response(agent_api.AgentAccepted(agent_id=agent_id, status="stopping"), 202)

    async def capabilities(request: web.Request) -> web.Response:
        return json_response(svc.capabilities())

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready = svc.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(svc.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi_document(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    return [
        web.get("/v1/pools", list_pools),
        web.get("/v1/pools/{pool_id}", get_pool),
        web.get("/v1/pools/{pool_id}/health", pool_health),
        web.post("/v1/pools/{pool_id}/drain", drain),
        web.post("/v1/pools/{pool_id}/resume", resume),
        web.post("/v1/pools/{pool_id}/reload", reload),
        web.get("/v1/agents", agents),
        web.post("/v1/agents/{agent_id}/stop", stop_agent),
        web.post("/v1/keys", create_key),
        web.get("/v1/keys", list_keys),
        web.delete("/v1/keys/{key_id}", revoke_key),
        web.get("/v1/capabilities", capabilities),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/openapi.json", openapi_document),
    ]
