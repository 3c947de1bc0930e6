"""The HTTP API's models: the single source of the wire shapes (design/API.md) and of the
generated OpenAPI documents.

A leaf: it imports only the core's enums. The service stages build SSE payloads and error
envelopes with it; the client SDK and `orchctl` import it and nothing else of the server.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

# The wire uses the domain's own enums (pure, no I/O): one definition, no conversions.
from orchestrator_core.errors import RETRIABLE, ErrorCode
from orchestrator_core.model import Determinism, PlacementMode, Priority, TaskState

__all__ = ["Determinism", "PlacementMode", "Priority", "TaskState"]  # re-exported for clients

API_VERSION = "1.0"

#: What an identifier a client chooses may be (tenants, correlation ids): it is logged,
#: echoed and labels work.
TOKEN_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]*"


class _Strict(BaseModel):
    # Requests: unknown fields and wrong types are errors, never silently coerced.
    model_config = ConfigDict(extra="forbid", strict=True)


def _integral(value: object) -> object:
    # JSON Schema's `integer` includes 4352.0 (JSON has one number type; some clients
    # serialize every number as a float); 4352.5 and "4352" stay errors.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: Marks an integer field of a strict request model as accepting integral floats.
INTEGRAL = BeforeValidator(_integral)


class Sampling(_Strict):
    temperature: Annotated[float, Field(ge=0, le=10)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] = []


class PlacementSpec(_Strict):
    mode: PlacementMode = PlacementMode.AUTO
    pool_id: str | None = None
    replica_id: str | None = None


class TaskRequest(_Strict):
    """`POST /v1/tasks`."""

    # (the embedded default serves `tiny-llama`: the example is a request that succeeds)
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "tiny-llama", "prompt": "Hello", "max_tokens": 8},
                {"model": "tiny-llama", "prompt": "Hi", "max_tokens": 4, "seed": 7,
                 "priority": "batch", "stream": True},
            ]
        }
    )  # fmt: skip

    task_id: UUID | None = Field(None, description="Client-chosen id; the server assigns one.")
    session_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)]
    prompt: str
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000), INTEGRAL] = 128
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), INTEGRAL] | None = None
    sampling: Sampling = Field(default_factory=Sampling)
    priority: Priority = Priority.INTERACTIVE
    deadline_ms: Annotated[int, Field(ge=1), INTEGRAL] | None = Field(
        None, description="Budget in ms from submission; the task expires if not done by then."
    )
    determinism: Determinism = Determinism.BEST_EFFORT
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    stream_metrics_ms: Annotated[int, Field(ge=250, le=60_000), INTEGRAL] | None = Field(
        None,
        description="With `stream`: also send an `event: metrics` (tokens so far, tokens/s, "
        "queue wait, replica) at most this often.",
    )
    stream: bool = Field(
        False,
        description="Answer with the task's SSE stream (as `Accept: text/event-stream` does) "
        "instead of 202; the task is canceled if the client leaves and does not resume.",
    )


class AdmissionResponse(BaseModel):
    task_id: str
    queue_position: int = Field(description="0-based: 0 means next to dispatch.")
    predicted_start_ms: int
    stream_url: str


#: The header a standby names the leader in (`NOT_LEADER`), beside the body's `leader_url`.
LEADER_HEADER = "X-Orchestratord-Leader"


class ErrorEnvelope(BaseModel):
    code: str
    message: str
    retriable: bool = False
    retry_after_ms: int | None = None
    policy_label: str | None = None
    engine: str | None = None
    pool_id: str | None = None
    field: str | None = Field(None, description="The offending request field, as a dotted path.")
    leader_url: str | None = Field(
        None, description="`NOT_LEADER`: where the leader is reached (absent: not known)."
    )
    first_retained: int | None = Field(
        None,
        description="`STREAM_GAP`: the oldest event id the stream still holds (resume with "
        "`Last-Event-ID` one below it to read on from there).",
    )

    @classmethod
    def of(
        cls,
        code: ErrorCode,
        message: str,
        *,
        retriable: bool | None = None,
        engine: str | None = None,
        pool_id: str | None = None,
        field: str | None = None,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
    ) -> ErrorEnvelope:
        """The one way an envelope is made; `retriable` defaults to the taxonomy's table
        (`orchestrator_core.errors.RETRIABLE`)."""
        return cls(
            code=code.value, message=message,
            retriable=code in RETRIABLE if retriable is None else retriable,
            engine=engine, pool_id=pool_id, field=field, retry_after_ms=retry_after_ms,
            policy_label=policy_label,
        )  # fmt: skip


class _Task(BaseModel):
    """What a task's status and a listing both say of it."""

    task_id: str
    state: TaskState
    model: str
    pool_id: str
    priority: Priority
    queue_position: int | None = None
    replica_id: str | None = None
    tokens_out: int = 0


class TaskSummary(_Task):
    """A task as a listing shows it (`GET /v1/tasks`)."""

    tenant: str
    age_ms: int = Field(description="Since its admission.")


class TaskStatus(_Task):
    """A task, with its outcome once it has ended (`GET /v1/tasks/{id}`)."""

    finish_reason: str | None = None
    seed: int | None = None
    output: str | None = Field(None, description="Generated text, once the task has ended.")
    output_truncated: bool = False
    error: ErrorEnvelope | None = None


class TaskList(BaseModel):
    #: Oldest first (in admission order).
    tasks: list[TaskSummary]
    #: More tasks matched than `limit` let through (the oldest are listed).
    truncated: bool


class SessionInfo(BaseModel):
    session_id: str
    ttl_ms: int
    turns: int
    replica_id: str | None
    kv_warmth: float


class ReplicaInfo(BaseModel):
    replica_id: str
    state: Literal["starting", "ready", "unready", "draining", "stopped", "failed"]
    slots_total: int
    slots_free: int
    engine: str
    engine_version: str
    model_digest: str
    deterministic: bool
    restarts: int = 0
    last_error: str | None = None
    endpoint: str | None = None
    #: The pool-managerd agent that runs it and that agent's host; null when local.
    agent_id: str | None = None
    host: str | None = None


class ReloadInfo(BaseModel):
    """A pool's latest reload: what its engines were asked to load, and how it went (why it
    failed: the old replicas kept serving). `orchctl reload --wait` follows it."""

    model: str
    state: Literal["reloading", "done", "failed"]
    error: str | None = None


class PoolInfo(BaseModel):
    pool_id: str
    engine: str
    model: str
    ready: bool
    draining: bool
    queue_depth: dict[str, int]
    queue_capacity: int
    policy: str
    ctx_max: int | None
    replicas: list[ReplicaInfo]
    last_error: str | None = None
    reload: ReloadInfo | None = None


class PoolList(BaseModel):
    pools: list[PoolInfo]


class PoolHealth(BaseModel):
    live: bool
    ready: bool
    draining: bool
    metrics: dict[str, float]


class DrainRequest(_Strict):
    deadline_ms: Annotated[int, Field(ge=0), INTEGRAL] = 30_000


class ReloadRequest(_Strict):
    model: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="The new model: a name the pool's config knows (its `model`, or a key "
        "of its `models`), or for managed llama.cpp a GGUF path under `server.model_dirs`."
    )
    resume: bool = Field(
        False, description="Also resume a draining pool once the new model serves."
    )


class KeyRole(StrEnum):
    READ = "read"
    SUBMIT = "submit"
    OPERATOR = "operator"
    ADMIN = "admin"


class KeyLimits(_Strict):
    """Per-key quotas (absent: unlimited); past one, submissions answer 429
    `QUOTA_EXCEEDED`."""

    max_concurrent: Annotated[int, Field(ge=1), INTEGRAL] | None = None
    max_queued: Annotated[int, Field(ge=0), INTEGRAL] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1), INTEGRAL] | None = None


class KeyCreate(_Strict):
    tenant: Annotated[str, Field(min_length=1, max_length=64, pattern=f"^{TOKEN_PATTERN}$")]
    roles: Annotated[list[KeyRole], Field(min_length=1, max_length=4)]
    limits: KeyLimits = Field(default_factory=KeyLimits)


class KeyInfo(BaseModel):
    id: str
    tenant: str
    roles: list[KeyRole]
    limits: KeyLimits
    created: int = Field(description="Unix seconds.")


class KeyCreated(KeyInfo):
    key: str = Field(description="The key itself: shown once, never stored in plain text.")


class KeyList(BaseModel):
    keys: list[KeyInfo]


class Accepted(BaseModel):
    pool_id: str
    status: str


class EngineCapability(BaseModel):
    engine: str
    engine_version: str
    pools: list[str]
    ctx_max: int | None


class CapabilitiesResponse(BaseModel):
    api_version: str = API_VERSION
    engines: list[EngineCapability]
    features: list[str]


# SSE event payloads (`event: NAME`, `id: N`, `data: JSON`)


class StartedEvent(BaseModel):
    task_id: str
    queue_position: int
    predicted_start_ms: int
    pool_id: str
    replica_id: str
    engine: str
    engine_version: str
    seed: int | None = None


class TokenEvent(BaseModel):
    i: int = Field(description="Index of the first token in this event (0-based).")
    t: str = Field(description="Text.")
    ids: list[int] | None = Field(
        None, description="The engine's token ids, where it reports them."
    )


class MetricsEvent(BaseModel):
    """`event: metrics` (opt-in, at most every `stream_metrics_ms`; no `id:` — it is not one
    of the task's events and never replays)."""

    tokens_out: int
    queue_wait_ms: int | None = Field(None, description="Admission to dispatch, once started.")
    decode_ms_so_far: int | None = Field(None, description="Since the first token.")
    tokens_per_s: float | None = None
    replica_id: str | None = None
    queue_position: int | None = Field(None, description="While queued.")


class EndEvent(BaseModel):
    tokens_out: int
    decode_ms: int
    finish_reason: Literal["stop", "length", "canceled"]
    tokens_in: int | None = Field(None, description="Prompt tokens, where the engine counts them.")
