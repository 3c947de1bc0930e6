"""The OpenAI-compatible door's wire shapes (the OpenAI API reference: chat completions,
completions, models), for validation and the generated OpenAPI document.

Requests are strict: a field the reference does not define is refused, naming it. Fields
it defines that orchestratord does not implement (tools, logprobs, response formats, n > 1,
...) are declared here only so that `unsupported()` can refuse them by name, never ignore
them; their neutral values (null, false, empty, 1) are accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator_core.model import Priority


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False
    #: Random padding against network side channels: never added here (false asks for
    #: nothing; true is refused by name).
    include_obfuscation: bool | None = None


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    #: A string, or a list of content parts (`{"type": "text", "text": ...}`).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    function_call: Any = None
    refusal: str | None = None


class _Sampling(_Request):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    #: An extension vLLM and llama.cpp take too.
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    #: An end-user identifier (OpenAI's abuse monitoring); accepted, not used.
    user: str | None = None
    #: Extension: the queue class (also the `X-Priority` header).
    priority: Priority | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ChatCompletionRequest(_Sampling):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


class CompletionRequest(_Sampling):
    """`POST /v1/completions`."""

    #: A string, or a list holding one string (token ids, which the reference allows too,
    #: are refused by name).
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


#: Fields declared but not implemented, and the values that ask for nothing.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False, True),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


def unsupported(request: BaseModel) -> str | None:
    """The first field `request` sets to something orchestratord does not implement."""
    for name in sorted(request.model_fields_set & _NEUTRAL.keys()):
        if getattr(request, name) not in _NEUTRAL[name]:
            return name
    return None


# -- responses (documentation of what the door answers; built as bytes on the hot path) --


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "orchestratord"
    #: Extensions: the pools serving it, whether one is Ready, what is queued for it, and
    #: who renders conversations (`engine`: its own chat template, `config`: the pool's).
    pools: list[str]
    ready: bool
    queue_depth: int
    chat_template: Literal["engine", "config", "none"]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    #: Our error code (`ADMISSION_REJECT`, `UNKNOWN_MODEL`, ...).
    code: str
    param: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
