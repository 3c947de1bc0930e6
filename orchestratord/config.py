"""The daemon's configuration: one YAML file, validated by pydantic (design/API.md).

Enumerations are the core's own (`QueuePolicy`, `Determinism`); engine names and what each
engine allows come from the engine registry (`orchestratord.engines`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator_core.model import Determinism
from orchestrator_core.queue import QueuePolicy
from orchestratord.chat_template import ChatTemplate
from orchestratord.engines import ENGINES
from pool_managerd import yaml_config
from pool_managerd.node_config import ID_PATTERN, ManagedReplicas
from pool_managerd.yaml_config import ConfigError as ConfigError  # re-exported


def _known_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; one of: {', '.join(ENGINES)}")
    return name


EngineName = Annotated[
    str, AfterValidator(_known_engine), WithJsonSchema({"type": "string", "enum": list(ENGINES)})
]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Cfg):
    cert: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1)]


class AgentTlsConfig(TlsConfig):
    #: Require agents to present a client certificate signed by this CA (PEM).
    client_ca: str | None = None


class AgentsConfig(_Cfg):
    """Where pool-managerd agents join (`pool-managerd serve --join grpc://HOST:PORT`)."""

    #: host:port of the agents' gRPC service (port 0: any free port, logged).
    listen: str = "127.0.0.1:7070"
    #: File holding the join token agents present (required: nobody joins without it).
    token_file: Annotated[str, Field(min_length=1)]
    #: Serve the agents over TLS (`grpcs://`); plaintext is refused then.
    tls: AgentTlsConfig | None = None
    #: How often agents send heartbeats, and how many may be missed before their replicas
    #: go Unready.
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    heartbeat_misses: Annotated[int, Field(ge=1, le=100)] = 3
    #: An agent away this long leaves its pools (its replicas are removed).
    forget_after_s: Annotated[float, Field(gt=0)] = 300.0


class ServerConfig(_Cfg):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    #: Bytes request bodies still arriving may hold together (each reserves twice its
    #: length: aiohttp gathers it, then copies it). A body that would pass it is refused
    #: unread with 503 `OVERLOADED`; at least twice `max_body_bytes`.
    body_buffer_bytes: Annotated[int, Field(ge=2048)] = 64 << 20
    #: Seconds running tasks get to finish on SIGTERM before they are cancelled.
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0
    #: How long a finished task's status and events stay available.
    retention_s: Annotated[float, Field(ge=0)] = 300.0
    max_retained_tasks: Annotated[int, Field(ge=1)] = 10_000
    #: Events kept per task for `Last-Event-ID` resume (the stream's memory bound)...
    stream_buffer_events: Annotated[int, Field(ge=16)] = 4096
    #: ... holding at most this much token text (bytes: a character of ASCII text counts
    #: one, any other four): an engine's long tokens shorten the window, not the bound.
    stream_buffer_bytes: Annotated[int, Field(ge=4096)] = 1 << 20
    #: Bytes the daemon may hold for tasks: queued requests, stream buffers, retained
    #: outputs. Past it, finished tasks are forgotten oldest first (they answer 410
    #: `EXPIRED`); when live tasks alone would pass it, admission answers 429.
    memory_budget_bytes: Annotated[int, Field(ge=1 << 20)] = 512 << 20
    #: Output kept per task for `GET /v1/tasks/{id}` (UTF-8 bytes).
    max_output_bytes: Annotated[int, Field(ge=0)] = 1 << 20
    #: A stream with nothing to send for this long sends an SSE comment (with the queue
    #: position while the task waits), so clients and proxies do not time out.
    stream_heartbeat_s: Annotated[float, Field(gt=0)] = 5.0
    #: A task whose stream is its request's answer (OpenAI `stream: true`, one-request
    #: native streaming, non-streamed OpenAI requests) is canceled when its client goes
    #: away and no reader comes back (Last-Event-ID resume) within this many seconds.
    abandon_grace_s: Annotated[float, Field(ge=0)] = 3.0
    #: API keys, hashed (`orchestratord keys create`): each names a tenant, roles and
    #: limits. With keys, every `/v1/` request needs `Authorization: Bearer <key>` (health,
    #: readiness, metrics and the OpenAPI stay open). Re-read on SIGHUP.
    keys_file: str | None = None
    #: Environment variable holding one admin key (tenant `default`), for simple setups.
    api_key_env: str | None = None
    #: Directories a reload may name GGUF files under (managed llama.cpp pools); any other
    #: path is refused without saying why.
    model_dirs: list[str] = []
    #: Serve HTTPS with this certificate chain and key (PEM files).
    tls: TlsConfig | None = None
    #: A connection with no request in progress — idle between requests, or still sending
    #: its request head — is closed after this long (bytes that do not complete a head do
    #: not extend it: slow-loris heads are bounded too).
    idle_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    #: A request's head (request line and headers) must arrive whole within this long of
    #: its first byte, else the connection is closed.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: A request's body must arrive whole within this long of its head, plus a second for
    #: every KiB it has sent (a slow upload that keeps coming is served; one that stalls,
    #: or sends less than its Content-Length, is answered 408 and its connection closed).
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: Connections held at once. Past it, only `/healthz`, `/readyz` and `/metrics` are
    #: served (everything else answers 503 `OVERLOADED`); past twice it, connections are
    #: answered 503 and closed unread. Lowered to fit the open-file limit if need be.
    max_connections: Annotated[int, Field(ge=1)] = 4096
    #: Longest request line, and longest header field; larger heads answer 431.
    max_header_bytes: Annotated[int, Field(ge=1024, le=65536)] = 8190
    #: Longest request head in all (request line and every header; nginx's default), so
    #: a connection's head holds at most this much; larger heads answer 431.
    max_head_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 32 << 10
    #: A client that takes none of its answer for this long while the daemon's writes to
    #: it wait is disconnected, the rest dropped (it stopped reading: it must not hold the
    #: answer's memory, a handler and a connection); a stream's task runs on.
    write_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: Enables the test-only provider-state endpoint (pact verification). Never in production.
    enable_test_endpoints: bool = False
    #: pool-managerd agents on other hosts join here (pools with `replicas.remote`).
    agents: AgentsConfig | None = None
    #: The URL clients reach this daemon at, which standbys name in `NOT_LEADER` (default:
    #: the URL it listens on — behind a proxy or NAT, set it).
    advertise_url: Annotated[str, Field(pattern=r"^https?://.+")] | None = None
    #: Where the daemon keeps its state (the task store); default
    #: `$XDG_STATE_HOME/orchestratord` (`~/.local/state/orchestratord`).
    state_dir: str | None = None

    @model_validator(mode="after")
    def _limits_fit(self) -> ServerConfig:
        if self.max_head_bytes < self.max_header_bytes:
            raise ValueError(
                f"max_head_bytes ({self.max_head_bytes}) must be at least max_header_bytes "
                f"({self.max_header_bytes}): a head holds its longest line"
            )
        if self.body_buffer_bytes < 2 * self.max_body_bytes:
            raise ValueError(
                f"body_buffer_bytes ({self.body_buffer_bytes}) must be at least twice "
                f"max_body_bytes ({self.max_body_bytes}): a body reserves twice its length"
            )
        return self

    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        xdg = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
        return Path(xdg) / "orchestratord"


class StoreConfig(_Cfg):
    """Where accepted tasks are journaled, so they survive the daemon."""

    #: `sqlite:` (a file in `server.state_dir`), `postgresql://user:pass@host/db` (a
    #: database daemons may share), or `memory:` (durability off: accepted work dies with
    #: the process).
    url: Annotated[str, Field(pattern=r"^(sqlite:|memory:|postgres(ql)?://.+)$")] = "sqlite:"
    #: SQLite `synchronous`: `normal` survives the daemon being killed; `full` also power
    #: loss (an fsync per commit group).
    synchronous: Literal["normal", "full"] = "normal"
    #: Cap on the store file; past it admissions answer 503 `STORE_UNAVAILABLE` while
    #: everything already accepted runs on (None: the disk's own limit).
    max_bytes: Annotated[int, Field(ge=65536)] | None = None
    #: PostgreSQL: the leader lease (daemons sharing the database elect one leader, which
    #: renews every third of it). A standby takes over at most this long after a leader
    #: dies or freezes; shorter fails over sooner, at one renewal per third of it.
    lease_s: Annotated[float, Field(ge=0.3, le=300)] = 10.0


class TokenCostsConfig(_Cfg):
    #: What one prompt token and one output token charge a tenant under token fairness.
    input: Annotated[int, Field(ge=0, le=1000)] = 1
    output: Annotated[int, Field(ge=0, le=1000)] = 2


class QueueConfig(_Cfg):
    capacity: Annotated[int, Field(ge=0)] = 256
    policy: QueuePolicy = QueuePolicy.REJECT
    tenant_weights: dict[str, Annotated[int, Field(ge=1)]] = {}
    #: How tenants share a priority: by tasks dispatched, or by tokens served (a virtual
    #: token counter per tenant: prompt and output tokens, weighed by `token_costs`).
    fairness: Literal["requests", "tokens"] = "requests"
    token_costs: TokenCostsConfig = TokenCostsConfig()


class PlacementConfig(_Cfg):
    #: Send a task where its prompt's prefix probably sits in an engine's KV cache.
    prefix_aware: bool = False
    #: Prompt bytes per indexed block (a prefix is matched in whole blocks).
    block_bytes: Annotated[int, Field(ge=16, le=65536)] = 256
    #: Memory the prefix index may use per replica.
    index_bytes: Annotated[int, Field(ge=4096)] = 1 << 20
    #: Prompt tokens one replica's cache holds (its KV memory, llama.cpp's `--cache-ram`):
    #: the index forgets, as the engine does, what no longer fits. None: as much as
    #: `index_bytes` can name.
    engine_cache_tokens: Annotated[int, Field(ge=1)] | None = None
    #: A replica counts its cached prefix only while it has at most this many more busy
    #: slots than the least busy replica (one hot prefix must not pile onto one replica).
    load_guard: Annotated[int, Field(ge=0)] = 1
    #: How long a task may wait for a busy replica holding its prefix, when the estimated
    #: prefill saved beats it (0: never wait).
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 0.0


class MockEngineConfig(_Cfg):
    token_rate: Annotated[float, Field(ge=0)] = 0.0
    ctx_per_slot: Annotated[int, Field(ge=1)] = 4096
    start_delay_s: Annotated[float, Field(ge=0)] = 0.0
    fail_after_tokens: Annotated[int, Field(ge=0)] | None = None
    stall_after_tokens: Annotated[int, Field(ge=0)] | None = None
    #: Answer every request with the engine's overload error (retriable backpressure).
    overloaded: bool = False
    fail_start: bool = False
    #: This replica (e.g. `mock-r1`) alters every stream's third token: non-determinism on
    #: purpose, for proving that the determinism gate fails.
    perturb_replica: str | None = None


class RemoteReplicas(_Cfg):
    """Replicas that pool-managerd agents on other hosts run and report."""

    #: The agent ids that may serve this pool; omitted: any agent that offers it.
    agents: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = None


class ReplicasConfig(_Cfg):
    managed: ManagedReplicas | None = None
    endpoints: list[str] | None = None
    remote: RemoteReplicas | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ReplicasConfig:
        if [self.managed, self.endpoints, self.remote].count(None) != 2:
            raise ValueError("give exactly one of 'managed', 'endpoints' or 'remote'")
        if self.endpoints is not None and not self.endpoints:
            raise ValueError("'endpoints' must list at least one URL")
        return self


class PoolConfig(_Cfg):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    engine: EngineName
    model: Annotated[str, Field(min_length=1)]
    queue: QueueConfig = QueueConfig()
    placement: PlacementConfig = PlacementConfig()
    replicas: ReplicasConfig
    determinism: Determinism = Determinism.BEST_EFFORT
    #: Prompt bytes per token, to estimate prompt length at admission without a tokenizer.
    bytes_per_token: Annotated[float, Field(gt=0)] = 4.0
    #: A stream that sends nothing for this long fails with DECODE_TIMEOUT.
    token_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: How often a task whose replica died before its first token is retried elsewhere.
    max_retries: Annotated[int, Field(ge=0)] = 2
    #: How long a starting replica may take to become Ready.
    start_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    #: Consecutive failed restarts after which a replica stays down (FAILED).
    max_restarts: Annotated[int, Field(ge=0)] = 5
    #: First restart delay; doubles per consecutive failure (with jitter), up to 30 s.
    restart_backoff_s: Annotated[float, Field(gt=0)] = 0.5
    mock: MockEngineConfig = MockEngineConfig()
    #: Engine-specific request fields merged into every request (e.g. llama.cpp
    #: `logit_bias`); the orchestrator's own fields (prompt, seed, limits) win.
    engine_params: dict[str, Any] = {}
    #: The model's name at the engine (OpenAI `model`, Triton model name); default `model`.
    engine_model: str | None = None
    #: OpenAI-compatible engines: use `/v1/chat/completions` instead of `/v1/completions`.
    chat: bool = False
    #: A Hugging Face style Jinja chat template (over `messages`, `add_generation_prompt`)
    #: for conversations sent to this pool: required where the engine has no chat route
    #: (triton); elsewhere it replaces the engine's own template.
    chat_template: str | None = None
    #: More models a reload may switch this pool to, by name: name -> what the engine
    #: loads (a GGUF path for managed llama.cpp, the engine's model name elsewhere). The
    #: pool's own `model` is always one.
    models: dict[str, Annotated[str, Field(min_length=1)]] = {}
    #: Environment variable holding the engine's bearer key (keys never live in configs).
    api_key_env: str | None = None
    #: Concurrent requests per attached endpoint for engines that do not report slots
    #: (OpenAI-compatible servers); others report their own.
    slots_per_endpoint: Annotated[int, Field(ge=1)] = 8
    #: Send the task priority to engines that schedule by it (vLLM `--scheduling-policy
    #: priority`); off by default because vLLM rejects a non-zero priority otherwise.
    engine_priority: bool = False
    #: How often replicas are health-probed once Ready, and misses before one is down.
    health_interval_s: Annotated[float, Field(gt=0)] = 2.0
    health_misses: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _engine_fits(self) -> PoolConfig:
        kind = ENGINES[self.engine]
        managed = self.replicas.managed
        if managed is not None and kind.manage is None:
            raise ValueError(f"engine {self.engine!r} cannot be managed here; use 'endpoints'")
        if self.replicas.endpoints is not None and kind.attach is None:
            raise ValueError(f"engine {self.engine!r} cannot attach to endpoints; use 'managed'")
        if self.replicas.remote is not None and kind.attach is None:
            raise ValueError(f"engine {self.engine!r} has no endpoints to reach on agents")
        if managed is not None and kind.needs_model_path and not managed.model_path:
            raise ValueError(f"managed {self.engine} replicas need 'replicas.managed.model_path'")
        return self

    @field_validator("chat_template")
    @classmethod
    def _compiles(cls, source: str | None) -> str | None:
        if source is not None:
            ChatTemplate(source)  # raises ChatTemplateError (a ValueError) naming the problem
        return source

    @property
    def strict(self) -> bool:
        """Every task runs deterministically: single-slot replicas, prompt cache off."""
        return self.determinism is Determinism.STRICT

    def model_refs(self) -> dict[str, str]:
        """What a reload may name: model name -> what the engine loads."""
        managed = self.replicas.managed
        own = managed.model_path if managed is not None and managed.model_path else self.model
        return {self.model: own, **self.models}

    @property
    def replica_count(self) -> int:
        managed = self.replicas.managed
        return managed.count if managed is not None else len(self.replicas.endpoints or ())

    @property
    def slots_per_replica(self) -> int:
        """Slots each replica offers: one in a strict pool, the configured number for
        managed replicas, and 0 for attached ones (as many as the engine reports)."""
        managed = self.replicas.managed
        if self.strict:
            return 1
        return managed.slots if managed is not None else 0


class BatchConfig(_Cfg):
    """The Batch API (`/v1/files`, `/v1/batches`); it needs a durable store."""

    #: Items of one batch queued or running at once: a batch is fed into the pool queue a
    #: window at a time, so it never fills the queue against other clients.
    window: Annotated[int, Field(ge=1, le=4096)] = 32
    #: Largest input file accepted.
    max_file_bytes: Annotated[int, Field(ge=1024)] = 100 << 20


class Config(_Cfg):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    batch: BatchConfig = BatchConfig()
    pools: Annotated[list[PoolConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _pools_fit(self) -> Config:
        seen: set[str] = set()
        for pool in self.pools:
            if pool.id in seen:
                raise ValueError(f"duplicate pool id {pool.id!r}")
            seen.add(pool.id)
            if pool.replicas.remote is not None and self.server.agents is None:
                raise ValueError(f"pool {pool.id!r} has remote replicas: set server.agents")
        return self


def parse_config(data: object, source: str = "config") -> Config:
    return yaml_config.parse(Config, data, source)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; raise ConfigError with every problem found."""
    return yaml_config.load(Config, path)
