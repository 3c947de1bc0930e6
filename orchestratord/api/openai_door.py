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

from typing import Any

import orjson
from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Priority
from orchestratord.api.errors import STATUS, error_response
from orchestratord.api.http import CID, json_response, parse, tenant_of
from orchestratord.api.sse import OpenAIChunks, response_id, usage_of
from orchestratord.api.streaming import stream_task
from orchestratord.api_models import EndEvent, ErrorEnvelope
from orchestratord.openai_models import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    unsupported,
)
from orchestratord.service import Orchestrator, Refusal
from orchestratord.service.admission import Submission
from orchestratord.service.streams import END, ERROR, TOKEN
from orchestratord.service.tasks import Door, TaskRecord
from worker_adapters.base import ChatMessage

CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
#: The paths whose errors are rendered in OpenAI's shape.
PATHS = frozenset({CHAT, COMPLETIONS, MODELS})


def _refuse(message: str, field: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_PARAMS, message, field=field)


def _priority(request: web.Request, field: Priority | None) -> Priority:
    header = request.headers.get("X-Priority")
    if header is None:
        return field or Priority.INTERACTIVE
    try:
        return Priority(header)
    except ValueError:
        raise _refuse("X-Priority must be 'interactive' or 'batch'", "X-Priority") from None


def _text(message: ChatMessageIn, i: int) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise _refuse(
                f"messages[{i}].content[{j}]: only text parts are supported "
                f"(got type {part.get('type')!r})",
                f"messages[{i}].content[{j}].type",
            )
        parts.append(part["text"])
    return "\n".join(parts)


def _messages(req: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out = []
    for i, message in enumerate(req.messages):
        if message.role in ("tool", "function") or message.tool_calls or message.function_call:
            raise _refuse(
                f"messages[{i}]: tool and function messages are not supported",
                f"messages[{i}].role",
            )
        out.append(ChatMessage(message.role, _text(message, i)))
    return tuple(out)


def _submission(
    request: web.Request,
    req: ChatCompletionRequest | CompletionRequest,
    door: Door,
    **what: Any,
) -> Submission:
    field = unsupported(req)
    if field is not None:
        raise _refuse(f"{field}: not supported by orchestratord", field)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return Submission(
        model=req.model, tenant=tenant_of(request), correlation_id=request[CID], door=door,
        seed=req.seed, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
        stop=stop, priority=_priority(request, req.priority), cancel_when_abandoned=True,
        **what,
    )  # fmt: skip


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


def _completion_body(rec: TaskRecord, text: str, end: EndEvent) -> dict[str, Any]:
    chat = rec.door is Door.OPENAI_CHAT
    choice: dict[str, Any] = {"index": 0, "finish_reason": end.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": response_id(rec), "object": "chat.completion" if chat else "text_completion",
        "created": rec.created, "model": rec.model, "choices": [choice], "usage": usage_of(end),
    }  # fmt: skip


def routes(svc: Orchestrator) -> list[web.RouteDef]:
    async def answer(
        request: web.Request, rec: TaskRecord, req: ChatCompletionRequest | CompletionRequest
    ) -> web.StreamResponse:
        headers = {"X-Task-Id": rec.task.id}
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            render = OpenAIChunks(rec, include_usage=usage)
            return await stream_task(request, svc, rec, render, headers=headers)
        text, end, error = await _collect(svc, rec)
        if end is not None and end.finish_reason == "canceled":
            error = ErrorEnvelope.of(ErrorCode.CANCELED, "the task was canceled")
        if error is not None or end is None:
            error = error or ErrorEnvelope.of(ErrorCode.INTERNAL, "the task ended unreported")
            response = error_response(error, STATUS[ErrorCode(error.code)], openai=True)
        else:
            body = orjson.dumps(_completion_body(rec, text, end))
            response = web.Response(body=body, content_type="application/json")
        response.headers.update(headers)
        return response

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        req = await parse(request, ChatCompletionRequest)
        max_tokens = req.max_completion_tokens or req.max_tokens
        sub = _submission(
            request, req, Door.OPENAI_CHAT, messages=_messages(req), max_tokens=max_tokens
        )
        return await answer(request, await svc.submit(sub), req)

    async def completions(request: web.Request) -> web.StreamResponse:
        req = await parse(request, CompletionRequest)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise _refuse("prompt: exactly one prompt per request is supported", "prompt")
            prompt = prompt[0]
        # OpenAI's default for completions is 16 tokens
        sub = _submission(
            request, req, Door.OPENAI_COMPLETION, prompt=prompt, max_tokens=req.max_tokens or 16
        )
        return await answer(request, await svc.submit(sub), req)

    async def models(request: web.Request) -> web.Response:
        return json_response(svc.models())

    return [
        web.post(CHAT, chat_completions),
        web.post(COMPLETIONS, completions),
        web.get(MODELS, models),
    ]
