"""OpenAI requests as tasks, and tasks' answers as OpenAI bodies — for the OpenAI door and
for Batch API items alike (an item is the body of a request to the same endpoints).

A field the reference defines that orchestratord does not implement is refused by name
(`unsupported`), never ignored; so is a conversation part that is not text.
"""

from __future__ import annotations

from typing import Any

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Priority
from orchestratord.api_models import EndEvent
from orchestratord.openai_models import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    unsupported,
)
from orchestratord.service.admission import Submission
from orchestratord.service.records import Door
from orchestratord.service.refusal import Refusal
from worker_adapters.base import ChatMessage

#: OpenAI's default `max_tokens` for completions.
COMPLETION_DEFAULT_TOKENS = 16


def refuse(message: str, field: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_PARAMS, message, field=field)


def _text(message: ChatMessageIn, i: int) -> str:
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise refuse(
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
            raise refuse(
                f"messages[{i}]: tool and function messages are not supported",
                f"messages[{i}].role",
            )
        out.append(ChatMessage(message.role, _text(message, i)))
    return tuple(out)


def submission(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    tenant: str,
    correlation_id: str,
    priority: Priority,
    **extra: Any,
) -> Submission:
    """The task an OpenAI request asks for (or a Refusal naming the field it cannot)."""
    field = unsupported(req)
    if field is not None:
        raise refuse(f"{field}: not supported by orchestratord", field)
    if req.stream_options is not None:
        if not req.stream:  # (as OpenAI and vLLM answer it)
            raise refuse("stream_options: only allowed when stream is true", "stream_options")
        if req.stream_options.include_obfuscation:
            field = "stream_options.include_obfuscation"
            raise refuse(f"{field}: not supported by orchestratord", field)
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    what: dict[str, Any]
    if isinstance(req, ChatCompletionRequest):
        what = {"door": Door.OPENAI_CHAT, "messages": _messages(req),
                "max_tokens": req.max_completion_tokens or req.max_tokens}  # fmt: skip
    else:
        prompt = req.prompt
        if not isinstance(prompt, str):
            texts = [one for one in prompt if isinstance(one, str)]
            if len(texts) != len(prompt):
                raise refuse("prompt: token ids are not supported; send the text", "prompt")
            if len(texts) != 1:
                raise refuse("prompt: exactly one prompt per request is supported", "prompt")
            prompt = texts[0]
        what = {"door": Door.OPENAI_COMPLETION, "prompt": prompt,
                "max_tokens": req.max_tokens or COMPLETION_DEFAULT_TOKENS}  # fmt: skip
    return Submission(
        model=req.model, tenant=tenant, correlation_id=correlation_id, seed=req.seed,
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, stop=stop,
        priority=priority, **what, **extra,
    )  # fmt: skip


def usage_of(end: EndEvent) -> dict[str, int]:
    prompt = end.tokens_in or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": end.tokens_out,
        "total_tokens": prompt + end.tokens_out,
    }


def response_id(door: Door, task_id: str) -> str:
    """The OpenAI response id: its kind, then our task id (so either finds the other)."""
    prefix = "cmpl" if door is Door.OPENAI_COMPLETION else "chatcmpl"
    return f"{prefix}-{task_id}"


def completion_body(
    door: Door, task_id: str, created: int, model: str, text: str, end: EndEvent
) -> dict[str, Any]:
    """A non-streamed `chat.completion` or `text_completion`."""
    chat = door is Door.OPENAI_CHAT
    choice: dict[str, Any] = {"index": 0, "finish_reason": end.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": response_id(door, task_id),
        "object": "chat.completion" if chat else "text_completion",
        "created": created, "model": model, "choices": [choice], "usage": usage_of(end),
    }  # fmt: skip
