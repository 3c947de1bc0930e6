"""The test-only provider-state endpoint for pact verification (`POST /_test/provider-states`).

Routed only when `server.enable_test_endpoints` is true — never in production. It puts
the daemon into the states the consumer pacts name, using the service's public operations
(submit, cancel, forget) with fixed task ids, and tears everything down between
interactions.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from orchestratord import api_models as api
from orchestratord.service import Orchestrator

#: Fixed ids the consumer pacts refer to.
RUNNING_TASK = "00000000-0000-4000-8000-000000000001"
FINISHED_TASK = "00000000-0000-4000-8000-000000000002"


async def _submit(svc: Orchestrator, task_id: str | None, prompt: str, wait: str) -> None:
    body: dict[str, Any] = {"model": svc.config.pools[0].model, "prompt": prompt, "max_tokens": 4}
    if task_id:
        svc.forget(task_id)  # a previous interaction's task with the same fixed id
        body["task_id"] = task_id
    admitted = svc.submit(
        api.TaskRequest.model_validate_json(json.dumps(body)),
        tenant="pact",
        correlation_id="provider-state",
    )
    if not wait:
        return
    async for chunk in svc.events(admitted.task_id):
        if f"event: {wait}".encode() in chunk:
            return


async def _teardown(svc: Orchestrator) -> None:
    """Cancel everything and wait until every slot is free again."""
    for pool in svc.pools.values():
        for task_id in [*pool.running, *(task.id for task in pool.queue)]:
            svc.cancel(task_id)
    await asyncio.gather(*(pool.wait_idle() for pool in svc.pools.values()))


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def provider_states(request: web.Request) -> web.Response:
        body = await request.json()
        state, action = body.get("state", ""), body.get("action", "setup")
        if action == "teardown":
            await _teardown(svc)
        elif state == "task running":
            await _submit(svc, RUNNING_TASK, "[[stall:1]]", "token")
        elif state == "task finished":
            await _submit(svc, FINISHED_TASK, "done", "end")
        elif state == "queue full":
            await _submit(svc, None, "[[stall:0]]", "started")  # holds the only slot
            capacity = svc.config.pools[0].queue.capacity
            for i in range(capacity):
                await _submit(svc, None, f"queued {i}", "")  # fills the queue
        return web.json_response({})

    return [web.post("/_test/provider-states", provider_states)]
