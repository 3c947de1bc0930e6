"""The data plane's routes: admit tasks (202, or their stream at once), follow them (SSE
with `Last-Event-ID` resume, native or OpenAI chunk format), read their status, cancel
them; sessions."""

from __future__ import annotations

import re

from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Placement, TaskState
from orchestratord import api_models as api
from orchestratord.api.answers import ANSWERS
from orchestratord.api.errors import gone
from orchestratord.api.http import CID, TASK_ID, json_response, parse, principal_of, traceparent_of
from orchestratord.api.sse import NativeEvents, renderer_for
from orchestratord.api.streaming import stream_task
from orchestratord.service import Orchestrator, Refusal, StreamGap
from orchestratord.service.admission import Submission
from orchestratord.service.records import TaskRecord

_EVENT_ID = re.compile(r"[0-9]{1,18}")


def _last_event_id(request: web.Request, rec: TaskRecord) -> int | None:
    """The event id to resume after: plain decimal digits, naming an event the stream has
    sent (a stream rebuilt after a restart may have sent more than it kept)."""
    last = request.headers.get("Last-Event-ID")
    if last is None:
        return None
    if not _EVENT_ID.fullmatch(last):
        raise Refusal(
            ErrorCode.INVALID_PARAMS,
            "Last-Event-ID must be a non-negative decimal event id",
            field="Last-Event-ID",
        )
    after = int(last)
    if after >= rec.stream.next_id and not rec.stream.partial:
        raise Refusal(
            ErrorCode.INVALID_PARAMS,
            f"Last-Event-ID {after} was never sent (the last event so far is "
            f"{rec.stream.next_id - 1})",
            field="Last-Event-ID",
        )
    return after


def _metrics_ms(request: web.Request, render: object) -> int | None:
    """`?metrics_ms=N`: live `metrics` events at most every N ms (native events only)."""
    raw = request.query.get("metrics_ms")
    if raw is None:
        return None
    if not (raw.isdigit() and 250 <= int(raw) <= 60_000):
        raise Refusal(
            ErrorCode.INVALID_PARAMS, "metrics_ms must be 250 to 60000", field="metrics_ms"
        )
    if not isinstance(render, NativeEvents):
        raise Refusal(
            ErrorCode.INVALID_PARAMS, "metrics events come with the native event format only",
            field="metrics_ms",
        )  # fmt: skip
    return int(raw)


#: A listing's page size: default and bounds.
LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000
_STATES = {state.value: state for state in TaskState}


def _listing(
    request: web.Request, svc: Orchestrator
) -> tuple[str | None, str | None, frozenset[TaskState] | None, int]:
    """`GET /v1/tasks`'s query: (`pool_id`, `tenant`, `state`s, `limit`), each checked (a
    tenant with no work here simply lists nothing)."""
    query = request.query
    pool_id, tenant = query.get("pool_id"), query.get("tenant")
    if pool_id is not None and pool_id not in svc.pools:
        raise Refusal(ErrorCode.NOT_FOUND, f"no pool {pool_id!r}", field="pool_id")
    states = None  # the service's default: the live ones
    if (raw := query.get("state")) is not None:
        names = [name.strip() for name in raw.split(",")]
        if names == ["all"]:
            states = frozenset(TaskState)
        elif unknown := [name for name in names if name not in _STATES]:
            raise Refusal(
                ErrorCode.INVALID_PARAMS,
                f"state {unknown[0]!r} is none of {', '.join(_STATES)} (comma-separated), "
                "nor `all`", field="state",
            )  # fmt: skip
        else:
            states = frozenset(_STATES[name] for name in names)
    limit = query.get("limit", str(LIST_LIMIT))
    if not (limit.isdigit() and 1 <= int(limit) <= MAX_LIST_LIMIT):
        raise Refusal(
            ErrorCode.INVALID_PARAMS, f"limit must be 1 to {MAX_LIST_LIMIT}", field="limit"
        )
    return pool_id, tenant, states, int(limit)


def submission(req: api.TaskRequest, request: web.Request, *, streamed: bool) -> Submission:
    """A native task request as admission takes it."""
    s = req.sampling
    return Submission(
        model=req.model, tenant=principal_of(request).tenant, correlation_id=request[CID],
        prompt=req.prompt, max_tokens=req.max_tokens, seed=req.seed,
        temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, stop=tuple(s.stop),
        priority=req.priority, deadline_ms=req.deadline_ms, determinism=req.determinism,
        placement=Placement(req.placement.mode, req.placement.replica_id),
        pool_id=req.placement.pool_id, session_id=req.session_id,
        task_id=str(req.task_id) if req.task_id else None, cancel_when_abandoned=streamed,
        traceparent=traceparent_of(request),
    )  # fmt: skip


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def submit(request: web.Request) -> web.StreamResponse:
        req = await parse(request, api.TaskRequest)
        streamed = req.stream or "text/event-stream" in request.headers.get("Accept", "")
        rec = await svc.submit(
            submission(req, request, streamed=streamed), by=principal_of(request)
        )
        task_id = rec.task.id
        where = {"Location": f"/v1/tasks/{task_id}", TASK_ID: task_id}
        if streamed:  # one request: the answer is the stream itself
            return await stream_task(
                request, svc, rec, NativeEvents(), headers=where, metrics_ms=req.stream_metrics_ms
            )
        admitted = api.AdmissionResponse(
            task_id=task_id, queue_position=rec.queue_position,
            predicted_start_ms=rec.predicted_start_ms, stream_url=f"/v1/tasks/{task_id}/stream",
        )  # fmt: skip
        response = json_response(admitted, 202)
        response.headers.update(where)
        return response

    async def listing(request: web.Request) -> web.Response:
        pool_id, tenant, states, limit = _listing(request, svc)
        viewer = principal_of(request)
        found = svc.tasks(viewer, pool_id=pool_id, tenant=tenant, states=states, limit=limit)
        return json_response(found)

    async def status(request: web.Request) -> web.Response:
        task_id, viewer = request.match_info["task_id"], principal_of(request)
        request.app[ANSWERS].expect(svc.task(task_id, viewer).output.text_bytes)
        return json_response(svc.status(task_id, viewer))

    async def cancel(request: web.Request) -> web.Response:
        svc.cancel(request.match_info["task_id"], principal_of(request))
        return web.Response(status=204)

    async def stream(request: web.Request) -> web.StreamResponse:
        rec = svc.task(request.match_info["task_id"], principal_of(request))
        render = renderer_for(rec, request.headers.get("Accept", ""))
        metrics_ms = _metrics_ms(request, render)
        after = _last_event_id(request, rec)
        try:
            return await stream_task(request, svc, rec, render, after=after, metrics_ms=metrics_ms)
        except StreamGap as gap:  # reading from before the oldest event retained
            return gone(gap.first_retained, str(gap))

    async def get_session(request: web.Request) -> web.Response:
        return json_response(svc.session(request.match_info["session_id"], principal_of(request)))

    async def delete_session(request: web.Request) -> web.Response:
        svc.delete_session(request.match_info["session_id"], principal_of(request))
        return web.Response(status=204)

    return [
        web.post("/v1/tasks", submit),
        web.get("/v1/tasks", listing),
        web.get("/v1/tasks/{task_id}", status),
        web.get("/v1/tasks/{task_id}/stream", stream),
        web.post("/v1/tasks/{task_id}/cancel", cancel),
        web.get("/v1/sessions/{session_id}", get_session),
        web.delete("/v1/sessions/{session_id}", delete_session),
    ]
