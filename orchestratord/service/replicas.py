"""Where each pool's replicas come from: spawned or attached here (`PoolManager`), or run
by pool-managerd agents on other hosts (`RemotePool`, fed by the agent hub)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from orchestratord.config import PoolConfig
from orchestratord.engines import ENGINES, launcher_for
from orchestratord.server_config import AgentsConfig
from orchestratord.telemetry import Metrics
from pool_managerd.hub import AgentHub, AgentSession
from pool_managerd.pool import PoolManager, PoolSpec
from pool_managerd.remote_pool import RemotePool
from pool_managerd.replica_set import ChangeHook, ReplicaSet


class RemoteReplicas:
    """The daemon's remote pools and the hub their agents join through (`server.agents`)."""

    def __init__(self, config: AgentsConfig, metrics: Metrics) -> None:
        self.config = config
        self.pools: dict[str, RemotePool] = {}
        self.hub = AgentHub(
            self.pools, join_token(config.token_file),
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_misses=config.heartbeat_misses, forget_after_s=config.forget_after_s,
        )  # fmt: skip
        self.hub.on_change = self._report
        self._metrics = metrics
        self._background: set[asyncio.Future[None]] = set()

    def _report(self, agent: AgentSession) -> None:
        if self.hub.agents.get(agent.agent_id) is not agent:  # forgotten
            if agent.agent_id not in self.hub.agents:
                self._metrics.drop_agent(agent.agent_id)
            return
        states = Counter(
            r.state for pool in self.pools.values() for r in pool.replicas
            if r.agent_id == agent.agent_id
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        self._metrics.on_agent(
            agent.agent_id, agent.connected, lambda: loop.time() - agent.last_seen, states,
            [(g.index, g.memory_used_bytes, g.utilization_percent / 100) for g in agent.gpus],
        )  # fmt: skip

    def stop_agent(self, agent: AgentSession) -> None:
        """Stop the agent's engines for every pool it serves (in the background)."""
        for pool_id in agent.pools:
            task = asyncio.ensure_future(self.pools[pool_id].stop_on(agent))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def pool(self, config: PoolConfig, on_change: ChangeHook) -> RemotePool:
        remote = config.replicas.remote
        assert remote is not None
        attach = ENGINES[config.engine].attach
        assert attach is not None  # config validation: remote pools' engines can attach
        pool = RemotePool(
            config.id, config.engine, config.model, config.strict,
            lambda url: attach(config, url), on_change, remote.agents,
        )  # fmt: skip
        self.pools[config.id] = pool
        return pool


def join_token(path: str) -> str:
    """The agents' join token, from its file; RuntimeError (one line) if unusable."""
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as e:
        raise RuntimeError(f"server.agents.token_file: cannot read {path}: {e.strerror}") from None
    if len(token) < 16:
        raise RuntimeError(f"server.agents.token_file: {path} must hold a token of 16+ characters")
    return token


def replica_set(
    config: PoolConfig, on_change: ChangeHook, remote: RemoteReplicas | None
) -> ReplicaSet:
    """The replica set that serves `config`'s pool."""
    if config.replicas.remote is not None:
        assert remote is not None  # config validation: remote pools need server.agents
        return remote.pool(config, on_change)
    spec = PoolSpec(
        id=config.id, engine=config.engine, model=config.model_refs()[config.model],
        replicas=config.replica_count, slots=config.slots_per_replica,
        deterministic=config.strict, start_timeout_s=config.start_timeout_s,
        max_restarts=config.max_restarts, backoff_base_s=config.restart_backoff_s,
        stats_interval_s=config.health_interval_s,
    )  # fmt: skip
    return PoolManager(spec, launcher_for(config), on_change)
