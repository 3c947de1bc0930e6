"""The daemon's configuration: one YAML file, validated by pydantic (design/API.md). The
`server:` section is `orchestratord.server_config`'s.

Enumerations are the core's own (`QueuePolicy`, `Determinism`); engine names and what each
engine allows come from the engine registry (`orchestratord.engines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator_core.model import Determinism
from orchestrator_core.queue import QueuePolicy
from orchestratord.chat_template import ChatTemplate
from orchestratord.engines import ENGINES
from orchestratord.server_config import ServerConfig
from pool_managerd import yaml_config
from pool_managerd.node_config import ID_PATTERN, ManagedReplicas
from pool_managerd.yaml_config import ConfigError as ConfigError  # re-exported
from pool_managerd.yaml_config import Section


def _known_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; one of: {', '.join(ENGINES)}")
    return name


EngineName = Annotated[
    str, AfterValidator(_known_engine), WithJsonSchema({"type": "string", "enum": list(ENGINES)})
]


class StoreConfig(Section):
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


class TokenCostsConfig(Section):
    #: What one prompt token and one output token charge a tenant under token fairness.
    input: Annotated[int, Field(ge=0, le=1000)] = 1
    output: Annotated[int, Field(ge=0, le=1000)] = 2


class QueueConfig(Section):
    capacity: Annotated[int, Field(ge=0)] = 256
    policy: QueuePolicy = QueuePolicy.REJECT
    tenant_weights: dict[str, Annotated[int, Field(ge=1)]] = {}
    #: How tenants share a priority: by tasks dispatched, or by tokens served (a virtual
    #: token counter per tenant: prompt and output tokens, weighed by `token_costs`).
    fairness: Literal["requests", "tokens"] = "requests"
    token_costs: TokenCostsConfig = TokenCostsConfig()


class PlacementConfig(Section):
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


class MockEngineConfig(Section):
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


class RemoteReplicas(Section):
    """Replicas that pool-managerd agents on other hosts run and report."""

    #: The agent ids that may serve this pool; omitted: any agent that offers it.
    agents: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = None


class ReplicasConfig(Section):
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


class PoolConfig(Section):
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


class BatchConfig(Section):
    """The Batch API (`/v1/files`, `/v1/batches`); it needs a durable store."""

    #: Items of one batch queued or running at once: a batch is fed into the pool queue a
    #: window at a time, so it never fills the queue against other clients.
    window: Annotated[int, Field(ge=1, le=4096)] = 32
    #: Largest input file accepted.
    max_file_bytes: Annotated[int, Field(ge=1024)] = 100 << 20


class Config(Section):
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
