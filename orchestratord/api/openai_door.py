"""The OpenAI-compatible door: `POST /v1/chat/completions`, `POST /v1/completions` and
`GET /v1/models`, as the OpenAI API reference defines them — in front of the same queue.

Every request is a task: visible in `GET /v1/tasks/{id}` (`X-Task-Id` names it), cancellable,
counted; its priority comes from `X-Priority` or the `priority` extension field, its tenant
from `X-Tenant-Id`. Streams carry SSE `id:`s, so `GET /v1/tasks/{id}/stream` with
`Last-Event-ID` and `Accept: text/event-stream; format=openai` resumes the same completion.
A client that goes away (and does not resume within `abandon_grace_s`) cancels its task.
Errors come in OpenAI's shape with our code (the middleware renders them for these paths).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Priority
from orchestratord.api.errors import STATUS, error_response
from orchestratord.api.http import (
    CID,
    REQUEST_ID,
    TASK_ID,
    json_response,
    parse,
    principal_of,
    traceparent_of,
)
from orchestratord.api.operations import OPERATIONS
from orchestratord.api.sse import OpenAIChunks
from orchestratord.api.streaming import stream_task
from orchestratord.api_models import EndEvent, ErrorEnvelope
from orchestratord.openai_models import ChatCompletionRequest, CompletionRequest
from orchestratord.service import Orchestrator
from orchestratord.service.admission import Submission
from orchestratord.service.openai_requests import completion_body, refuse, submission
from orchestratord.service.records import TaskRecord
from orchestratord.service.streams import END, ERROR, TOKEN

CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
#: The native API's resources under `/v1/` (from the operations table). Every other `/v1/`
#: path is the OpenAI API's — served here (this door, the Batch API) or not
#: (`/v1/embeddings`, `/v1/responses`, ...) — and its errors take OpenAI's shape, so an
#: OpenAI client reads why it was refused.
NATIVE = frozenset(
    op.path.split("/")[2]
    for op in OPERATIONS
    if op.plane != "openai" and op.path.startswith("/v1/")
)
#: What a client of the OpenAI API finds here (said when it asks for anything else).
SERVED = (
    "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, /v1/files and /v1/batches"
)
#: One model's card: its id may hold slashes (`org/name`), as OpenAI's SDK sends it.
MODEL = MODELS + "/{model:.+}"


def is_openai_path(path: str) -> bool:
    """Whether `path` belongs to the OpenAI API (served here or not): its errors are
    rendered in OpenAI's shape."""
    return path.startswith("/v1/") and path.split("/", 3)[2] not in NATIVE


def _priority(request: web.Request, field: Priority | None) -> Priority:
    header = request.headers.get("X-Priority")
    if header is None:
        return field or Priority.INTERACTIVE
    try:
        priority = Priority(header)
    except ValueError:
        raise refuse("X-Priority must be 'interactive' or 'batch'", "X-Priority") from None
    if field is not None and field is not priority:  # neither may quietly lose
        raise refuse(
            f"X-Priority ({priority.value}) and the priority field ({field.value}) disagree; "
            "send one of them", "X-Priority",
        )  # fmt: skip
    return priority


def _submission(request: web.Request, req: ChatCompletionRequest | CompletionRequest) -> Submission:
    return submission(
        req, tenant=principal_of(request).tenant, correlation_id=request[CID],
        priority=_priority(request, req.priority), cancel_when_abandoned=True,
        traceparent=traceparent_of(request),
    )  # fmt: skip


async def _submit(
    svc: Orchestrator, request: web.Request, req: ChatCompletionRequest | CompletionRequest
) -> TaskRecord:
    return await svc.submit(_submission(request, req), by=principal_of(request))


async def _collect(
    svc: Orchestrator, rec: TaskRecord
) -> tuple[str, EndEvent | None, ErrorEnvelope | None]:
    """Wait for a non-streamed task's end: (text, end, error)."""
    text: list[str] = []
    with svc.reading(rec):
        async for batch in rec.stream.read():
            for event in batch:
                if event[0] == TOKEN:
                    text.append(event[3])
                elif event[0] == END:
                    return "".join(text), event[2], None
                elif event[0] == ERROR:
                    return "".join(text), None, event[2]
    return "".join(text), None, None


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def answer(
        request: web.Request, rec: TaskRecord, req: ChatCompletionRequest | CompletionRequest
    ) -> web.StreamResponse:
        headers = {TASK_ID: rec.task.id}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            render = OpenAIChunks(rec, include_usage=usage)
            # sent before the middleware sees the response, which sets it on all others
            headers[REQUEST_ID] = request[CID]
            return await stream_task(request, svc, rec, render, headers=headers)
        text, end, error = await _collect(svc, rec)
        if end is not None and end.finish_reason == "canceled":
            error = ErrorEnvelope.of(ErrorCode.CANCELED, "the task was canceled")
        if error is not None or end is None:
            error = error or ErrorEnvelope.of(ErrorCode.INTERNAL, "the task ended unreported")
            status = STATUS[ErrorCode(error.code)]
            response = error_response(error, status, error.retry_after_ms, openai=True)
        else:
            body = orjson.dumps(
                completion_body(rec.door, rec.task.id, rec.created, rec.model, text, end)
            )
            response = web.Response(body=body, content_type="application/json")
        response.headers.update(headers)
        return response

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        req = await parse(request, ChatCompletionRequest)
        return await answer(request, await _submit(svc, request, req), req)

    async def completions(request: web.Request) -> web.StreamResponse:
        req = await parse(request, CompletionRequest)
        return await answer(request, await _submit(svc, request, req), req)

    async def models(request: web.Request) -> web.Response:
        return json_response(svc.models())

    async def model(request: web.Request) -> web.Response:
        return json_response(svc.model(request.match_info["model"]))

    return [
        web.post(CHAT, chat_completions),
        web.post(COMPLETIONS, completions),
        web.get(MODELS, models),
        web.get(MODEL, model),
    ]
