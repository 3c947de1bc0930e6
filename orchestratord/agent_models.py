"""The wire shapes of pool-managerd agents as the control plane reports them
(`GET /v1/agents`, `orchctl agents`): a leaf beside `api_models`, which the client SDK
imports too."""

from __future__ import annotations

from pydantic import BaseModel


class GpuInfo(BaseModel):
    """One GPU of an agent's host, from its latest heartbeat (NVML)."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int


class AgentCommand(BaseModel):
    """A command the control plane sent an agent (drain, resume, reload, stop), and how it
    ended there."""

    pool_id: str
    action: str
    ok: bool
    error: str | None = None


class AgentInfo(BaseModel):
    """A pool-managerd agent: connected now, or lost and remembered until it rejoins or is
    forgotten (`server.agents.forget_after_s`)."""

    agent_id: str
    host: str
    version: str
    connected: bool
    #: Seconds since its last message (heartbeat or report).
    last_seen_s: float
    #: Why it is not connected; null while it is.
    lost_reason: str | None = None
    pools: list[str]
    #: Its replicas by state, over all its pools.
    replicas: dict[str, int]
    gpus: list[GpuInfo] = []
    #: The latest command that ended, with its result.
    last_command: AgentCommand | None = None


class AgentList(BaseModel):
    agents: list[AgentInfo]


class AgentAccepted(BaseModel):
    agent_id: str
    status: str
