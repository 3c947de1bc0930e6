"""Prometheus metrics (design/API.md minimum set). Label values are bounded: pools,
replicas, priorities, engines and fixed reasons — never task or session ids.

Nothing here runs per token: token counters are added once per task at its end.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# `*_created` series double the exposition and are not in the metrics contract.
disable_created_metrics()

_MS_BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry()
        self.tasks_enqueued = Counter(
            "tasks_enqueued", "Tasks admitted to a queue", ["pool_id", "priority"], registry=r
        )
        self.tasks_started = Counter(
            "tasks_started",
            "Tasks dispatched to a replica",
            ["pool_id", "replica_id", "engine", "engine_version"],
            registry=r,
        )
        self.tasks_canceled = Counter(
            "tasks_canceled", "Tasks canceled", ["pool_id", "reason"], registry=r
        )
        self.tasks_rejected = Counter(
            "tasks_rejected",
            "Tasks refused at admission or dropped from a queue",
            ["pool_id", "reason"],
            registry=r,
        )
        self.tasks_finished = Counter(
            "tasks_finished",
            "Tasks that reached a terminal state",
            ["pool_id", "state"],
            registry=r,
        )
        self.queue_depth = Gauge("queue_depth", "Queued tasks", ["pool_id", "priority"], registry=r)
        self.tokens_in = Counter(
            "tokens_in", "Prompt tokens processed", ["pool_id", "engine"], registry=r
        )
        self.tokens_out = Counter(
            "tokens_out", "Tokens generated", ["pool_id", "engine"], registry=r
        )
        self.latency_first_token = Histogram(
            "latency_first_token_ms",
            "Admission to first token, ms",
            ["pool_id", "priority"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.latency_decode = Histogram(
            "latency_decode_ms",
            "First token to end, ms",
            ["pool_id", "priority"],
            buckets=_MS_BUCKETS,
            registry=r,
        )
        self.backpressure = Counter(
            "admission_backpressure_events", "429 answers", ["pool_id", "policy"], registry=r
        )
        self.kv_cache_usage = Gauge(
            "kv_cache_usage_ratio",
            "KV cache in use, from the engine",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.vram_used = Gauge(
            "vram_used_bytes",
            "GPU memory in use, from the engine",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.gpu_utilization = Gauge(
            "gpu_utilization",
            "GPU utilisation 0..1, from the engine",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.slots_busy = Gauge(
            "replica_slots_busy", "Leased slots", ["pool_id", "replica_id"], registry=r
        )
        self.slots_total = Gauge(
            "replica_slots_total", "Slots", ["pool_id", "replica_id"], registry=r
        )
        self.engine_busy = Gauge(
            "replica_engine_busy",
            "Requests the engine reports processing (its own view)",
            ["pool_id", "replica_id"],
            registry=r,
        )
        self.replica_ready = Gauge(
            "replica_ready", "1 when the replica is Ready", ["pool_id", "replica_id"], registry=r
        )
        self.placement_decisions = Counter(
            "placement_decisions", "Placement outcomes", ["pool_id", "outcome"], registry=r
        )
        self.replica_restarts = Counter(
            "replica_restarts", "Engine restarts", ["pool_id", "replica_id"], registry=r
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: prometheus-client validates and locks on every
        `labels()` call, which this avoids on the request path."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
