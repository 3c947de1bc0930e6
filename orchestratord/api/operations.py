"""Every operation the daemon serves, as data: what `api.openapi` turns into the OpenAPI
documents, what `api.access` authorizes by (the roles each needs), and what a test holds
equal to the daemon's routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from orchestratord import agent_models as agent_api
from orchestratord import api_models as api
from orchestratord import batch_models as bat
from orchestratord import openai_models as oai
from orchestratord.principals import Role

TENANT = ("X-Tenant-Id", "Who the task is accounted to for fairness")
PRIORITY = ("X-Priority", "The queue class, `interactive` (default) or `batch`")
RESUME = ("Last-Event-ID", "Resume after this event id")

#: Who may call an operation: any one of these roles (README, "Keys and roles").
Access = tuple[Role, ...]
PUBLIC: Access = ()
READ: Access = (Role.READ,)
SUBMIT: Access = (Role.SUBMIT,)
#: Ending work: its submitter, or an operator.
END_WORK: Access = (Role.SUBMIT, Role.OPERATOR)
OPERATOR: Access = (Role.OPERATOR,)
ADMIN: Access = (Role.ADMIN,)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    plane: str  # data | control | openai
    summary: str
    request: type[BaseModel] | None = None
    #: status -> JSON response model (None: no JSON body)
    ok: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    #: statuses that answer (also, or only) with a `text/event-stream`
    sse: tuple[int, ...] = ()
    #: optional request headers: (name, description)
    headers: tuple[tuple[str, str], ...] = ()
    #: the error body (the OpenAI door answers in OpenAI's shape)
    error: type[BaseModel] = api.ErrorEnvelope
    content: str = "application/json"
    #: optional query parameters: (name, description)
    query: tuple[tuple[str, str], ...] = ()
    #: a multipart/form-data upload (the Files API), instead of a JSON `request`
    upload: bool = False
    #: OpenAPI links from a success status: name -> (operationId, {parameter: expression})
    links: dict[int, dict[str, tuple[str, dict[str, str]]]] = field(default_factory=dict)
    #: The roles that may call it (required: a new operation must say who may).
    access: Access = field(kw_only=True)

    @property
    def audited(self) -> bool:
        """A control-plane action: it writes one audit log line (who, what, result)."""
        return self.plane == "control" and self.method != "get"


_TASK_ID = {"task_id": "$response.body#/task_id"}
#: Where a new task's id leads (clients, and schemathesis' stateful phase, follow them).
_TASK_LINKS = {
    "GetTask": ("get_v1_tasks_task_id", _TASK_ID),
    "StreamTask": ("get_v1_tasks_task_id_stream", _TASK_ID),
    "CancelTask": ("post_v1_tasks_task_id_cancel", _TASK_ID),
}


_OPENAI_ERRORS = (400, 401, 404, 409, 413, 429, 502, 503, 504)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/tasks", "data",
        "Admit a task into its pool's queue (202); with `stream: true` or "
        "`Accept: text/event-stream`, answer with its SSE stream at once (200)",
        api.TaskRequest, {202: api.AdmissionResponse, 200: None}, (400, 404, 413, 429, 503),
        sse=(200,), headers=(TENANT,), links={202: _TASK_LINKS}, access=SUBMIT,
    ),
    Operation(
        "get", "/v1/tasks", "data",
        "The tasks the caller may see (another tenant's only with an operator or admin "
        "key), oldest first: queued and running ones unless `state` says otherwise",
        ok={200: api.TaskList}, errors=(400, 404), access=READ,
        query=(("pool_id", "Only this pool's"), ("tenant", "Only this tenant's"),
               ("state", "Comma-separated states (`queued,running` by default), or `all`"),
               ("limit", "At most this many, the oldest: 1 to 1000 (default 100)")),
    ),
    Operation(
        "get", "/v1/tasks/{task_id}", "data", "A task's state (and output once ended)",
        ok={200: api.TaskStatus}, errors=(404, 410), access=READ,
    ),
    Operation(
        "get", "/v1/tasks/{task_id}/stream", "data",
        "The task's SSE stream; Last-Event-ID resumes after that event; "
        "`Accept: text/event-stream; format=openai` renders OpenAI chunks",
        ok={200: None}, errors=(400, 404, 410), sse=(200,), headers=(RESUME,), access=READ,
        query=(("metrics_ms", "Also send `event: metrics` at most every N ms (250-60000; "
                "native format)"),),
    ),
    Operation(
        "post", "/v1/tasks/{task_id}/cancel", "data", "Cancel a task (idempotent)",
        ok={204: None}, errors=(404, 410), access=END_WORK,
    ),
    Operation(
        "get", "/v1/sessions/{session_id}", "data", "Session affinity and KV warmth",
        ok={200: api.SessionInfo}, errors=(404,), access=READ,
    ),
    Operation(
        "delete", "/v1/sessions/{session_id}", "data", "Forget a session", ok={204: None},
        access=SUBMIT,
    ),
    Operation(
        "post", "/v1/chat/completions", "openai",
        "OpenAI chat completion through the queue (stream or not); X-Task-Id names its task",
        oai.ChatCompletionRequest, {200: oai.ChatCompletion}, _OPENAI_ERRORS, sse=(200,),
        headers=(TENANT, PRIORITY), error=oai.OpenAIError, access=SUBMIT,
    ),
    Operation(
        "post", "/v1/completions", "openai",
        "OpenAI text completion through the queue (stream or not); X-Task-Id names its task",
        oai.CompletionRequest, {200: oai.Completion}, _OPENAI_ERRORS, sse=(200,),
        headers=(TENANT, PRIORITY), error=oai.OpenAIError, access=SUBMIT,
    ),
    Operation(
        "get", "/v1/models", "openai", "Served models, with their pools, readiness and queue",
        ok={200: oai.ModelList}, error=oai.OpenAIError, access=READ,
    ),
    Operation(
        "get", "/v1/models/{model}", "openai", "One served model (its id may hold slashes)",
        ok={200: oai.ModelCard}, errors=(404,), error=oai.OpenAIError, access=READ,
    ),
    Operation(
        "post", "/v1/files", "openai",
        "Upload a batch input file (multipart: `purpose=batch`, then `file`, JSONL); every "
        "line is checked, and a file with a bad line is refused naming it",
        ok={200: bat.FileObject}, errors=(400, 503), error=oai.OpenAIError, upload=True,
        access=SUBMIT,
    ),
    Operation(
        "get", "/v1/files", "openai", "Batch files", ok={200: bat.FileList},
        error=oai.OpenAIError, access=READ,
    ),
    Operation(
        "get", "/v1/files/{file_id}", "openai", "A file's metadata", ok={200: bat.FileObject},
        errors=(404,), error=oai.OpenAIError, access=READ,
    ),
    Operation(
        "get", "/v1/files/{file_id}/content", "openai", "A file's content (JSONL)",
        ok={200: None}, errors=(404,), error=oai.OpenAIError, content="application/jsonl",
        access=READ,
    ),
    Operation(
        "delete", "/v1/files/{file_id}", "openai", "Delete a file", ok={200: bat.FileDeleted},
        errors=(404,), error=oai.OpenAIError, access=SUBMIT,
    ),
    Operation(
        "post", "/v1/batches", "openai",
        "Run a file's requests as `batch`-priority tasks, durably, a window at a time",
        bat.BatchCreate, {200: bat.Batch}, (400, 404, 503), error=oai.OpenAIError,
        headers=(TENANT,), access=SUBMIT,
    ),
    Operation(
        "get", "/v1/batches", "openai", "Batches, newest first", ok={200: bat.BatchList},
        errors=(400,), error=oai.OpenAIError,
        query=(("after", "The last batch id of the previous page"),
               ("limit", "Page size, 1 to 100 (default 20)")), access=READ,
    ),
    Operation(
        "get", "/v1/batches/{batch_id}", "openai", "A batch", ok={200: bat.Batch},
        errors=(404,), error=oai.OpenAIError, access=READ,
    ),
    Operation(
        "post", "/v1/batches/{batch_id}/cancel", "openai",
        "Cancel a batch: its running items are canceled, what finished is kept",
        ok={200: bat.Batch}, errors=(404,), error=oai.OpenAIError, access=END_WORK,
    ),
    Operation(
        "get", "/v1/pools", "control", "Pools and their replicas", ok={200: api.PoolList},
        access=READ,
    ),
    Operation(
        "get", "/v1/pools/{pool_id}", "control", "One pool", ok={200: api.PoolInfo},
        errors=(404,), access=READ,
    ),
    Operation(
        "get", "/v1/pools/{pool_id}/health", "control", "A pool's health",
        ok={200: api.PoolHealth}, errors=(404,), access=READ,
    ),
    Operation(
        "post", "/v1/pools/{pool_id}/drain", "control",
        "Stop admitting (new work answers 503 `POOL_DRAINING`); end what remains at the "
        "deadline unless resumed first", api.DrainRequest, {202: api.Accepted}, (400, 404),
        access=OPERATOR,
    ),
    Operation(
        "post", "/v1/pools/{pool_id}/resume", "control",
        "Undo a drain: admit and lease again (kubectl's uncordon); idempotent",
        ok={202: api.Accepted}, errors=(404,), access=OPERATOR,
    ),
    Operation(
        "post", "/v1/pools/{pool_id}/reload", "control",
        "Swap to a model the config names, atomically; rolled back on failure; a drained "
        "pool stays drained unless `resume`", api.ReloadRequest, {202: api.Accepted},
        (400, 404, 409), access=OPERATOR,
    ),
    Operation(
        "get", "/v1/agents", "control",
        "pool-managerd agents: connected or lost, their pools, replicas and GPUs",
        ok={200: agent_api.AgentList}, access=READ,
    ),
    Operation(
        "post", "/v1/agents/{agent_id}/stop", "control",
        "Stop the agent's engines (every pool it serves), e.g. before maintenance; the agent "
        "stays joined and reports them stopped; they start again when it restarts",
        ok={202: agent_api.AgentAccepted}, errors=(404, 409), access=OPERATOR,
    ),
    Operation(
        "post", "/v1/keys", "control",
        "Make an API key (shown once; only its hash is kept)", api.KeyCreate,
        {201: api.KeyCreated}, (400, 409), access=ADMIN,
    ),
    Operation("get", "/v1/keys", "control", "API keys (never the keys themselves)",
              ok={200: api.KeyList}, errors=(409,), access=ADMIN),
    Operation(
        "delete", "/v1/keys/{key_id}", "control", "Revoke an API key (at once)",
        ok={204: None}, errors=(404, 409), access=ADMIN,
    ),
    Operation(
        "get", "/v1/capabilities", "control", "Engines, versions and context limits",
        ok={200: api.CapabilitiesResponse}, access=READ,
    ),
    Operation("get", "/healthz", "control", "Liveness", ok={200: None}, access=PUBLIC),
    Operation(
        "get", "/readyz", "control", "Readiness: a replica is Ready", ok={200: None},
        errors=(503,), access=PUBLIC,
    ),
    Operation(
        "get", "/metrics", "control", "Prometheus metrics", ok={200: None}, content="text/plain",
        access=PUBLIC,
    ),
    Operation(
        "get", "/openapi.json", "control", "This API's OpenAPI document", ok={200: None},
        access=PUBLIC,
    ),
)  # fmt: skip
