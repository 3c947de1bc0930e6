"""The test-only provider-state endpoint for pact verification (`POST /_test/provider-states`).

Routed only when `server.enable_test_endpoints` is true — never in production. It puts
the daemon into the states the consumer pacts name, using the service's public operations
(submit, cancel, forget) with fixed task ids, and tears everything down between
interactions.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from orchestratord.principals import Principal, Role
from orchestratord.service import Orchestrator
from orchestratord.service.admission import Submission
from orchestratord.service.streams import END, STARTED, TOKEN

#: Provider states are set up as an operator would (they see and end every tenant's work).
OPERATOR = Principal("pact", frozenset({Role.OPERATOR}))
#: Fixed ids the consumer pacts refer to.
RUNNING_TASK = "00000000-0000-4000-8000-000000000001"
FINISHED_TASK = "00000000-0000-4000-8000-000000000002"


async def _submit(svc: Orchestrator, task_id: str | None, prompt: str, wait: int | None) -> None:
    if task_id:
        svc.forget(task_id)  # a previous interaction's task with the same fixed id
    rec = await svc.submit(Submission(
        model=svc.config.pools[0].model, tenant="pact", correlation_id="provider-state",
        prompt=prompt, max_tokens=4, task_id=task_id,
    ))  # fmt: skip
    if wait is None:
        return
    async for batch in rec.stream.read():
        if any(event[0] == wait for event in batch):
            return


async def _teardown(svc: Orchestrator) -> None:
    """Cancel everything and wait until every slot is free again."""
    for pool in svc.pools.values():
        for task_id in [*pool.running, *(task.id for task in pool.queue)]:
            svc.cancel(task_id, OPERATOR)
    await asyncio.gather(*(pool.wait_idle() for pool in svc.pools.values()))


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def provider_states(request: web.Request) -> web.Response:
        body = await request.json()
        state, action = body.get("state", ""), body.get("action", "setup")
        if action == "teardown":
            await _teardown(svc)
        elif state == "task running":
            await _submit(svc, RUNNING_TASK, "[[stall:1]]", TOKEN)
        elif state == "task finished":
            await _submit(svc, FINISHED_TASK, "done", END)
        elif state == "queue full":
            await _submit(svc, None, "[[stall:0]]", STARTED)  # holds the only slot
            capacity = svc.config.pools[0].queue.capacity
            for i in range(capacity):
                await _submit(svc, None, f"queued {i}", None)  # fills the queue
        return web.json_response({})

    return [web.post("/_test/provider-states", provider_states)]
