"""An agent's node config (`pool-managerd serve --config node.yaml`): who the agent is and
which pools' engines it runs on its host.

    agent: {id: gpu-a, host: gpu-a.example, engine_host: 10.0.0.5}
    pools:
      - id: tiny                      # a `remote` pool of the control plane's config
        engine: llamacpp
        model: tiny
        managed: {count: 1, slots: 2, model_path: /models/tiny.gguf}
        models: {tiny-v2: /models/tiny-v2.gguf}   # what a reload may name

`ManagedReplicas` is shared with the daemon's own config (replicas it spawns itself).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pool_managerd.yaml_config import Section

#: Pool and agent ids: what metrics labels and replica ids are made of.
ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"


class ManagedReplicas(Section):
    count: Annotated[int, Field(ge=1, le=64)] = 1
    slots: Annotated[int, Field(ge=1, le=256)] = 2
    model_path: str | None = None
    #: Total context per replica; split across its slots (llama.cpp `-c`).
    ctx: Annotated[int, Field(ge=16)] | None = None
    threads: Annotated[int, Field(ge=1)] | None = None
    args: list[str] = []


class AgentIdentity(Section):
    #: Stable across restarts: a rejoining agent replaces its own replicas.
    id: Annotated[str, Field(pattern=ID_PATTERN)] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "agent"
    )
    #: The host as operators know it (shown by `orchctl agents`).
    host: str = Field(default_factory=socket.gethostname)
    #: The address engines listen on and orchestratord reaches them at (data plane).
    engine_host: str = "127.0.0.1"

    @field_validator("engine_host")
    @classmethod
    def _reachable(cls, host: str) -> str:
        try:
            unspecified = ipaddress.ip_address(host).is_unspecified
        except ValueError:  # a host name
            return host
        if unspecified:
            raise ValueError("must be an address orchestratord can reach, not a wildcard")
        return host


class NodePool(Section):
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    #: Managed: llama.cpp; attached (endpoints on this host): llama.cpp or TGI.
    engine: Literal["llamacpp", "tgi"]
    #: The model's name (what the pool's first replicas load: `managed.model_path`).
    model: Annotated[str, Field(min_length=1)]
    managed: ManagedReplicas | None = None
    endpoints: list[str] | None = None
    #: More models a reload may name: name -> model file on this host.
    models: dict[str, Annotated[str, Field(min_length=1)]] = {}
    #: Byte-exact determinism: one slot, no prompt cache.
    deterministic: bool = False
    start_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    max_restarts: Annotated[int, Field(ge=0)] = 5
    restart_backoff_s: Annotated[float, Field(gt=0)] = 0.5
    health_interval_s: Annotated[float, Field(gt=0)] = 2.0
    health_misses: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _one_kind(self) -> NodePool:
        if (self.managed is None) == (self.endpoints is None):
            raise ValueError("give exactly one of 'managed' or 'endpoints'")
        if self.endpoints is not None and not self.endpoints:
            raise ValueError("'endpoints' must list at least one URL")
        if self.managed is not None:
            if self.engine != "llamacpp":
                raise ValueError(f"engine {self.engine!r} cannot be managed here; use 'endpoints'")
            if not self.managed.model_path:
                raise ValueError("managed llamacpp replicas need 'managed.model_path'")
        return self

    def model_refs(self) -> dict[str, str]:
        """What a reload may name: model name -> what the engine loads."""
        own = self.managed.model_path if self.managed and self.managed.model_path else self.model
        return {self.model: own, **self.models}

    @property
    def replica_count(self) -> int:
        return self.managed.count if self.managed is not None else len(self.endpoints or ())

    @property
    def slots(self) -> int:
        """Slots per replica: one when deterministic, 0 (as reported) when attached."""
        if self.deterministic:
            return 1
        return self.managed.slots if self.managed is not None else 0


class NodeConfig(Section):
    agent: AgentIdentity = AgentIdentity()
    pools: Annotated[list[NodePool], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_ids(self) -> NodeConfig:
        ids = [pool.id for pool in self.pools]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate pool ids in {ids}")
        return self
