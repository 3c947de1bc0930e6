"""Prometheus metrics (.specs/metrics/otel-prom.md), declared by one table and changed only
through named hooks (`on_admitted`, `on_rejected`, `on_finished`, ...) called by the service
stages at the moments they name. Label values are bounded: pools, replicas, priorities,
engines and fixed reasons — never task or session ids. The series are plain numbers
(`telemetry.series`), exposed through prometheus-client's registry and text format.

Nothing here runs per token: token counts are added once per task, when it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from prometheus_client import CollectorRegistry

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import PRIORITIES, Priority, Task, TaskState
from orchestrator_core.queue import PoolQueue, QueuePolicy
from orchestratord.telemetry.series import Distribution, Family, Kind, SeriesCollector, Value
from pool_managerd.replica import Replica, ReplicaEvent, ReplicaState

#: Tenants labelled by name in the per-tenant families (the rest are `other`).
MAX_TENANT_LABELS = 100
_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
_POOL_REPLICA = ("pool_id", "replica_id")

#: attribute, kind, family name, help, labels
_FAMILIES: tuple[tuple[str, Kind, str, str, tuple[str, ...]], ...] = (
    ("tasks_enqueued", "counter", "tasks_enqueued", "Tasks admitted to a queue",
     ("pool_id", "priority")),
    ("tasks_started", "counter", "tasks_started", "Tasks dispatched to a replica",
     ("pool_id", "replica_id", "engine", "engine_version")),
    ("tasks_canceled", "counter", "tasks_canceled", "Tasks canceled", ("pool_id", "reason")),
    ("tasks_rejected", "counter", "tasks_rejected",
     "Tasks refused at admission or dropped from a queue", ("pool_id", "reason")),
    ("tasks_finished", "counter", "tasks_finished", "Tasks that reached a terminal state",
     ("pool_id", "state")),
    ("queue_depth", "gauge", "queue_depth", "Queued tasks", ("pool_id", "priority")),
    ("queue_wait", "histogram", "queue_wait_ms", "Admission to dispatch (time in queue), ms",
     ("pool_id", "priority")),
    ("queue_estimated_wait", "gauge", "queue_estimated_wait_ms",
     "How long a task admitted now would wait before it starts (the admission estimate): "
     "the signal to scale a pool by", ("pool_id", "priority")),
    ("tokens_in", "counter", "tokens_in", "Prompt tokens processed", ("pool_id", "engine")),
    ("tokens_out", "counter", "tokens_out", "Tokens generated", ("pool_id", "engine")),
    ("latency_first_token", "histogram", "latency_first_token_ms",
     "Admission to first token, ms", ("pool_id", "priority")),
    ("latency_decode", "histogram", "latency_decode_ms", "First token to end, ms",
     ("pool_id", "priority")),
    ("backpressure", "counter", "admission_backpressure_events", "429 answers",
     ("pool_id", "policy")),
    ("kv_cache_usage", "gauge", "kv_cache_usage_ratio", "KV cache in use, from the engine",
     _POOL_REPLICA),
    ("vram_used", "gauge", "vram_used_bytes", "GPU memory in use, from the engine", _POOL_REPLICA),
    ("gpu_utilization", "gauge", "gpu_utilization", "GPU utilisation 0..1, from the engine",
     _POOL_REPLICA),
    ("slots_busy", "gauge", "replica_slots_busy", "Leased slots", _POOL_REPLICA),
    ("slots_total", "gauge", "replica_slots_total", "Slots", _POOL_REPLICA),
    ("engine_busy", "gauge", "replica_engine_busy",
     "Requests the engine reports processing (its own view)", _POOL_REPLICA),
    ("replica_ready", "gauge", "replica_ready", "1 when the replica is Ready", _POOL_REPLICA),
    ("placement_decisions", "counter", "placement_decisions", "Placement outcomes",
     ("pool_id", "outcome")),
    ("prefix_prompt_tokens", "counter", "prefix_prompt_tokens",
     "Prompt tokens (admission estimate) of tasks placed in prefix-aware pools", ("pool_id",)),
    ("prefix_cached_tokens", "counter", "prefix_cached_tokens",
     "Of those, tokens the prefix index expected in the chosen replica's cache (the hit "
     "ratio is this over prefix_prompt_tokens)", ("pool_id",)),
    ("engine_cached_tokens", "counter", "engine_cached_tokens",
     "Prompt tokens engines reported taking from their cache (llama.cpp `cache_n`; the "
     "engine's hit ratio is this over tokens_in)", ("pool_id",)),
    ("determinism_failures", "counter", "determinism_failures",
     "Strict tasks whose rerun after a restart diverged from what they had streamed",
     ("pool_id",)),
    ("tenant_tasks_finished", "counter", "tenant_tasks_finished",
     "Tasks that reached a terminal state, by tenant (the first 100 tenants seen; the rest "
     "count as `other`)", ("tenant", "state")),
    ("tenant_tokens_out", "counter", "tenant_tokens_out", "Tokens generated, by tenant (as above)",
     ("tenant",)),
    ("tenant_tokens_in", "counter", "tenant_tokens_in",
     "Prompt tokens processed, by tenant (as above)", ("tenant",)),
    ("replica_restarts", "counter", "replica_restarts", "Engine restarts", _POOL_REPLICA),
    ("loop_lag", "histogram", "event_loop_lag_ms",
     "How late the event loop ran a timer due every 0.5 s, ms: what every request waited "
     "on top of its own work", ()),
    ("store_commit", "histogram", "store_commit_latency_ms",
     "One group commit of the task store, ms", ()),
    ("batches", "gauge", "batches", "Batch API batches by status", ("status",)),
    ("batch_items", "counter", "batch_items", "Batch API items ended, by outcome", ("outcome",)),
    ("batch_output_failures", "counter", "batch_output_failures",
     "Finished batches whose output files could not be written (tried again later)", ()),
    ("memory_accounted", "gauge", "memory_accounted_bytes",
     "Bytes charged to the memory budget, by live and retained (finished) tasks", ("kind",)),
    ("memory_budget", "gauge", "memory_budget_bytes", "server.memory_budget_bytes", ()),
    ("connections_open", "gauge", "connections_open", "HTTP connections held now", ()),
    ("connections_waiting", "gauge", "connections_waiting",
     "Connections the kernel has completed that the daemon has not accepted yet (its listen "
     "queue: standing, the daemon's loop is too busy to accept)", ()),
    ("connections_dropped", "counter", "connections_dropped",
     "Connections closed on their clients: a head or a body too slow, an answer not taken, "
     "or opened past twice server.max_connections", ("reason",)),
    ("request_body_bytes", "gauge", "request_body_bytes",
     "Bytes reserved for request bodies being received (at most server.body_buffer_bytes)", ()),
    ("response_body_bytes", "gauge", "response_body_bytes",
     "Bytes reserved for large answers being written (server.answer_buffer_bytes)", ()),
    ("leader", "gauge", "leader",
     "1 while this daemon leads (runs the queues); 0 while it stands by", ()),
    ("agent_connected", "gauge", "agent_connected",
     "1 while the pool-managerd agent's stream is open", ("agent_id",)),
    ("agent_seen_age", "gauge", "agent_heartbeat_age_seconds",
     "Seconds since the agent's last message (heartbeat or report)", ("agent_id",)),
    ("agent_replicas", "gauge", "agent_replicas", "The agent's replicas, by state",
     ("agent_id", "state")),
    ("agent_gpu_memory", "gauge", "agent_gpu_memory_used_bytes",
     "GPU memory in use on the agent's host (NVML)", ("agent_id", "gpu")),
    ("agent_gpu_utilization", "gauge", "agent_gpu_utilization",
     "GPU utilisation 0..1 on the agent's host (NVML)", ("agent_id", "gpu")),
)  # fmt: skip

#: Families labelled per replica (their first two labels are the pool and the replica).
_REPLICA_FAMILIES = frozenset(a for a, _, _, _, labels in _FAMILIES if labels[:2] == _POOL_REPLICA)

#: Bucket bounds per histogram family (ms) where the default ones do not fit: a store
#: commit takes well under a millisecond; the loop's lateness matters from 100 ms to seconds.
_BUCKETS = {
    "store_commit": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000),
    "loop_lag": (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
}

#: How a terminal (state, code) is counted beyond `tasks_finished`: (family, reason).
_ENDINGS: dict[tuple[TaskState, ErrorCode | None], tuple[str, str]] = {
    (TaskState.CANCELED, ErrorCode.CANCELED): ("tasks_canceled", "client"),
    (TaskState.CANCELED, ErrorCode.POOL_UNAVAILABLE): ("tasks_canceled", "pool_unavailable"),
    (TaskState.CANCELED, ErrorCode.STORE_UNAVAILABLE): ("tasks_canceled", "store_unavailable"),
    (TaskState.EVICTED, ErrorCode.QUEUE_FULL_DROP_LRU): ("tasks_rejected", "drop_lru"),
    (TaskState.EXPIRED, ErrorCode.DEADLINE_UNMET): ("tasks_rejected", "deadline_unmet"),
}


class EndedTask(Protocol):
    """What `on_finished` reads of a task record (service.records.TaskRecord)."""

    task: Task
    engine: str
    tokens_in: int | None
    tokens_out: int
    admitted_at: float
    first_token_at: float | None
    ended_at: float | None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._families: dict[str, Family] = {}
        self._tenants: set[str] = set()
        for attr, kind, name, help_text, labels in _FAMILIES:
            bounds = _BUCKETS.get(attr, _MS_BUCKETS) if kind == "histogram" else ()
            self._families[attr] = Family(kind, name, help_text, labels, bounds)
        self.registry.register(SeriesCollector(list(self._families.values())))

    def _value(self, family: str, labels: tuple[str, ...]) -> Value:
        return self._families[family].value(labels)

    def _histogram(self, family: str, labels: tuple[str, ...]) -> Distribution:
        return self._families[family].distribution(labels)

    # Label values are plain strings or StrEnum members, which are strings equal to their
    # values (one series either way; `.value` costs two Python calls on the hot path).
    def _inc(self, family: str, *labels: str, by: float = 1) -> None:
        self._families[family].value(labels).inc(by)  # (`_value` inlined: per task)

    def _set(self, family: str, value: float, *labels: str) -> None:
        self._families[family].value(labels).set(value)

    # -- admission and queues ----------------------------------------------------------

    def on_admitted(self, pool_id: str, priority: Priority) -> None:
        self._inc("tasks_enqueued", pool_id, priority)

    def on_rejected(self, pool_id: str, reason: str, policy: QueuePolicy | None = None) -> None:
        """A request refused at admission; `policy` when it was the queue's backpressure."""
        self._inc("tasks_rejected", pool_id, reason)
        if policy is not None:
            self._inc("backpressure", pool_id, policy.value)

    # -- dispatch ----------------------------------------------------------------------

    def on_placement(self, pool_id: str, outcome: str) -> None:
        self._inc("placement_decisions", pool_id, outcome)

    def on_prefix(self, pool_id: str, prompt_tokens: int, cached_tokens: int) -> None:
        """A task was placed in a prefix-aware pool, expecting `cached_tokens` cached."""
        self._inc("prefix_prompt_tokens", pool_id, by=prompt_tokens)
        self._inc("prefix_cached_tokens", pool_id, by=cached_tokens)

    def on_engine_cache_hit(self, pool_id: str, cached_tokens: int) -> None:
        self._inc("engine_cached_tokens", pool_id, by=cached_tokens)

    def on_started(
        self, pool_id: str, replica: Replica, priority: Priority, waited_ms: float
    ) -> None:
        """A task leased a slot after `waited_ms` in the queue (retries: since admission)."""
        self._inc("tasks_started", pool_id, replica.id, replica.engine, replica.engine_version)
        self._histogram("queue_wait", (pool_id, priority)).observe(waited_ms)

    def add_pool(
        self, pool_id: str, queue: PoolQueue, estimate: Callable[[Priority], float]
    ) -> None:
        """A pool exists: its rare-event counters start at 0 (so alerts on them have a
        series to watch); its queue's depth, and the wait `estimate` says a new task of
        each priority would see, are read at each scrape (not set per task)."""
        self._value("determinism_failures", (pool_id,))
        for priority in PRIORITIES:
            labels = (pool_id, priority.value)
            self._value("queue_depth", labels).set_function(partial(queue.depth, priority))
            self._value("queue_estimated_wait", labels).set_function(partial(estimate, priority))

    def on_determinism_failure(self, pool_id: str) -> None:
        self._inc("determinism_failures", pool_id)

    def _tenant(self, tenant: str) -> str:
        """The tenant's label: its own for the first `MAX_TENANT_LABELS` seen, then `other`
        (tenants are chosen by clients: their series must stay bounded)."""
        if tenant in self._tenants:
            return tenant
        if len(self._tenants) < MAX_TENANT_LABELS:
            self._tenants.add(tenant)
            return tenant
        return "other"

    def on_finished(self, ended: EndedTask) -> None:
        """Once per task, at its terminal state."""
        task = ended.task
        pool_id = task.pool_id
        self._inc("tasks_finished", pool_id, task.state)
        tenant = self._tenant(task.tenant)
        self._inc("tenant_tasks_finished", tenant, task.state)
        if ended.tokens_out:
            self._inc("tenant_tokens_out", tenant, by=ended.tokens_out)
        if ended.tokens_in:
            self._inc("tenant_tokens_in", tenant, by=ended.tokens_in)
        counted = _ENDINGS.get((task.state, task.error))
        if counted is not None:
            self._inc(counted[0], pool_id, counted[1])
            if task.state is TaskState.EVICTED:
                self._inc("backpressure", pool_id, QueuePolicy.DROP_LRU.value)
        if ended.tokens_out:
            self._inc("tokens_out", pool_id, ended.engine, by=ended.tokens_out)
        if ended.tokens_in:
            self._inc("tokens_in", pool_id, ended.engine, by=ended.tokens_in)
        first, end = ended.first_token_at, ended.ended_at
        if first is not None and end is not None:
            labels = (pool_id, task.priority)
            self._histogram("latency_first_token", labels).observe(first - ended.admitted_at)
            self._histogram("latency_decode", labels).observe(end - first)

    # -- replicas ----------------------------------------------------------------------

    def on_replica(self, pool_id: str, replica: Replica, event: ReplicaEvent) -> None:
        rid = replica.id
        if event is ReplicaEvent.REMOVED:  # retired for good (a reload): its series go too
            self._drop_series(pool_id, rid)
            return
        self._set("replica_ready", int(replica.state is ReplicaState.READY), pool_id, rid)
        self._value("replica_restarts", (pool_id, rid))  # 0 until the first restart
        self._set("slots_total", replica.slots_total, pool_id, rid)
        # leased slots are read at each scrape (not set per lease), from the replica object
        # this event is about: a restart may bring a new one under the same id
        self._value("slots_busy", (pool_id, rid)).set_function(partial(_busy, replica))
        if event is ReplicaEvent.RESTART:
            self._inc("replica_restarts", pool_id, rid)
        elif event is ReplicaEvent.STATS:
            if replica.kv_free_fraction is not None:
                self._set("kv_cache_usage", 1.0 - replica.kv_free_fraction, pool_id, rid)
            if replica.engine_busy is not None:
                self._set("engine_busy", replica.engine_busy, pool_id, rid)

    def _drop_series(self, pool_id: str, replica_id: str) -> None:
        """Remove every series labelled with this replica, so reloads do not grow the
        exposition forever (found: each reload left the old replica ids behind)."""
        for family in _REPLICA_FAMILIES:
            series = self._families[family].series
            for labels in [labels for labels in series if labels[:2] == (pool_id, replica_id)]:
                del series[labels]

    # -- limits (read when scraped) ----------------------------------------------------

    def watch_memory(
        self, budget: int, live: Callable[[], float], retained: Callable[[], float]
    ) -> None:
        """The memory budget and what is charged to it, read at each scrape."""
        self._value("memory_budget", ()).set(budget)
        self._value("memory_accounted", ("live",)).set_function(live)
        self._value("memory_accounted", ("retained",)).set_function(retained)

    def set_leader(self, leading: bool) -> None:
        self._value("leader", ()).set(int(leading))

    def watch_connections(
        self,
        open_now: Callable[[], float],
        waiting: Callable[[], float],
        dropped: Callable[[str], float],
        reasons: Sequence[str],
    ) -> None:
        """The connections held, those waiting to be accepted, and those closed on their
        clients by reason, read at each scrape (the connections outlive a leadership term's
        metrics)."""
        self._value("connections_open", ()).set_function(open_now)
        self._value("connections_waiting", ()).set_function(waiting)
        for reason in reasons:
            self._value("connections_dropped", (reason,)).set_function(partial(dropped, reason))

    def watch_bodies(self, requests: Callable[[], float], answers: Callable[[], float]) -> None:
        """The bytes reserved for request bodies and for answers, read at each scrape."""
        self._value("request_body_bytes", ()).set_function(requests)
        self._value("response_body_bytes", ()).set_function(answers)

    # -- agents ------------------------------------------------------------------------

    def on_agent(
        self,
        agent_id: str,
        connected: bool,
        seen_age: Callable[[], float],
        replicas: dict[ReplicaState, int],
        gpus: Sequence[tuple[int, int, float]],
    ) -> None:
        """An agent joined, reported, beat or was lost: its connection, replicas by state,
        and GPUs as (index, memory used, utilisation 0..1); the age is read at scrape."""
        self._set("agent_connected", int(connected), agent_id)
        self._value("agent_seen_age", (agent_id,)).set_function(seen_age)
        for state in ReplicaState:
            self._set("agent_replicas", replicas.get(state, 0), agent_id, state.value)
        for index, used, utilization in gpus:
            self._set("agent_gpu_memory", used, agent_id, str(index))
            self._set("agent_gpu_utilization", utilization, agent_id, str(index))

    def drop_agent(self, agent_id: str) -> None:
        """The agent was forgotten: its series go."""
        for name, family in self._families.items():
            if name.startswith("agent_"):
                for labels in [labels for labels in family.series if labels[0] == agent_id]:
                    del family.series[labels]

    # -- the task store ----------------------------------------------------------------

    def on_store_commit(self, seconds: float) -> None:
        """Once per group commit (many admissions and endings each)."""
        self._histogram("store_commit", ()).observe(seconds * 1000.0)

    def on_loop_lag(self, ms: float) -> None:
        """Every `loop_lag.PERIOD_S`: how late the event loop ran its timer."""
        self._histogram("loop_lag", ()).observe(ms)

    # -- the Batch API -----------------------------------------------------------------

    def on_batch(self, before: str | None, after: str) -> None:
        """A batch moved from status `before` (None: new, or loaded on start) to `after`."""
        if before is not None:
            self._value("batches", (before,)).dec()
        self._value("batches", (after,)).inc()

    def on_batch_item(self, outcome: str) -> None:
        self._inc("batch_items", outcome)

    def on_batch_output_failed(self) -> None:
        self._inc("batch_output_failures")


def _busy(replica: Replica) -> int:
    return replica.busy
