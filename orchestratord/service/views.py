"""Read models: what the API shows of tasks, sessions, pools and engines, built from the
task book and the dispatchers' public state. Nothing here changes anything."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal

from orchestrator_core.model import PRIORITIES
from orchestrator_core.sessions import SessionInfo as Session
from orchestratord import agent_models as agent_api
from orchestratord import api_models as api
from orchestratord import openai_models as oai
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.records import TaskRecord
from orchestratord.service.replicas import RemoteReplicas

#: What the daemon offers beyond the core API (`GET /v1/capabilities`).
FEATURES = (
    "sse", "last-event-id", "priorities", "drop-lru", "tenant-fairness", "session-affinity",
    "determinism-strict", "drain", "reload",
)  # fmt: skip


def task_status(rec: TaskRecord, queue_position: int | None) -> api.TaskStatus:
    task = rec.task
    return api.TaskStatus(
        task_id=task.id, state=task.state, model=rec.model, pool_id=task.pool_id,
        priority=task.priority, queue_position=queue_position,
        replica_id=rec.replica_id, tokens_out=rec.tokens_out, finish_reason=rec.finish_reason,
        seed=rec.seed, output=rec.output.text() if rec.ended else None,
        output_truncated=rec.output_truncated, error=rec.error,
    )  # fmt: skip


def task_summary(rec: TaskRecord, queue_position: int | None, now_ms: float) -> api.TaskSummary:
    task = rec.task
    return api.TaskSummary(
        task_id=task.id, state=task.state, model=rec.model, pool_id=task.pool_id,
        priority=task.priority, queue_position=queue_position, replica_id=rec.replica_id,
        tokens_out=rec.tokens_out, tenant=task.tenant,
        age_ms=max(round(now_ms - rec.admitted_at), 0),
    )  # fmt: skip


def session_info(session_id: str, info: Session, ttl_ms: int, kv_warmth: float) -> api.SessionInfo:
    return api.SessionInfo(
        session_id=session_id, ttl_ms=ttl_ms, turns=info.turns, replica_id=info.replica_id,
        kv_warmth=round(kv_warmth, 3),
    )  # fmt: skip


def pool_info(pool: PoolDispatcher) -> api.PoolInfo:
    manager = pool.manager
    replicas = [
        api.ReplicaInfo(
            replica_id=r.id, state=r.state.value, slots_total=r.slots_total,
            slots_free=max(r.slots_total - r.busy, 0), engine=r.engine,
            engine_version=r.engine_version, model_digest=r.model_digest,
            deterministic=r.deterministic, restarts=r.restarts, last_error=r.last_error,
            endpoint=r.endpoint, agent_id=r.agent_id, host=r.host,
        )
        for r in manager.replicas
    ]  # fmt: skip
    config = pool.config
    return api.PoolInfo(
        pool_id=pool.id, engine=config.engine, model=config.model, ready=manager.ready,
        draining=pool.draining, queue_depth={p.value: pool.queue.depth(p) for p in PRIORITIES},
        queue_capacity=pool.queue.capacity, policy=config.queue.policy.value,
        ctx_max=pool.ctx_max(), replicas=replicas, last_error=manager.last_error,
        reload=_reload_info(pool),
    )  # fmt: skip


def _reload_info(pool: PoolDispatcher) -> api.ReloadInfo | None:
    task, model = pool.reload_task, pool.reload_model
    if task is None or model is None:
        return None
    if not task.done():
        return api.ReloadInfo(model=model, state="reloading")
    if task.cancelled():
        error: str | None = "the daemon stopped before it settled"
    elif (bug := task.exception()) is not None:
        error = f"the reload failed unexpectedly: {bug!r}"
    else:
        error = task.result()
    return api.ReloadInfo(model=model, state="failed" if error else "done", error=error)


def agent_list(remote: RemoteReplicas | None, now_s: float) -> agent_api.AgentList:
    if remote is None:
        return agent_api.AgentList(agents=[])
    out = []
    for agent in sorted(remote.hub.agents.values(), key=lambda a: a.agent_id):
        states = Counter(
            r.state.value for pool in remote.pools.values() for r in pool.replicas
            if r.agent_id == agent.agent_id
        )  # fmt: skip
        last = agent.last_command
        command = last and agent_api.AgentCommand(
            pool_id=last[0], action=last[1], ok=last[2] is None, error=last[2]
        )
        out.append(agent_api.AgentInfo(
            agent_id=agent.agent_id, host=agent.host, version=agent.version,
            connected=agent.connected, last_seen_s=round(max(now_s - agent.last_seen, 0.0), 3),
            lost_reason=agent.lost_reason, pools=agent.pools, replicas=dict(states),
            gpus=[agent_api.GpuInfo(
                index=g.index, name=g.name, memory_used_bytes=g.memory_used_bytes,
                memory_total_bytes=g.memory_total_bytes,
                utilization_percent=g.utilization_percent,
            ) for g in agent.gpus], last_command=command,
        ))  # fmt: skip
    return agent_api.AgentList(agents=out)


def pool_health(pool: PoolDispatcher) -> api.PoolHealth:
    total, busy = pool.slot_counts()
    return api.PoolHealth(
        live=True, ready=pool.manager.ready, draining=pool.draining,
        metrics={"queue_depth": len(pool.queue), "slots_total": total, "slots_busy": busy,
                 "running": len(pool.running)},
    )  # fmt: skip


def capabilities(pools: Iterable[PoolDispatcher]) -> api.CapabilitiesResponse:
    """One entry per (engine, engine version), listing the pools that run it."""
    engines: dict[tuple[str, str], api.EngineCapability] = {}
    for pool in pools:
        engine = pool.config.engine
        versions = {r.engine_version for r in pool.manager.replicas if r.engine_version} or {""}
        ctx = pool.ctx_max()
        for version in sorted(versions):
            cap = engines.setdefault(
                (engine, version),
                api.EngineCapability(engine=engine, engine_version=version, pools=[], ctx_max=None),
            )
            cap.pools.append(pool.id)
            if ctx is not None:
                cap.ctx_max = max(cap.ctx_max or 0, ctx)
    return api.CapabilitiesResponse(engines=list(engines.values()), features=list(FEATURES))


def models(pools: Iterable[PoolDispatcher], created: int) -> oai.ModelList:
    """`GET /v1/models`: one card per served model, with our extensions."""
    by_model: dict[str, list[PoolDispatcher]] = {}
    for pool in pools:
        by_model.setdefault(pool.config.model, []).append(pool)
    cards = []
    for model, serving in by_model.items():
        template: Literal["engine", "config", "none"] = "none"
        if any(p.chat_template is not None for p in serving):
            template = "config"
        elif any(p.engine_renders_chat for p in serving):
            template = "engine"
        cards.append(oai.ModelCard(
            id=model, created=created, pools=[p.id for p in serving],
            ready=any(p.manager.ready for p in serving),
            queue_depth=sum(len(p.queue) for p in serving), chat_template=template,
        ))  # fmt: skip
    return oai.ModelList(data=cards)
