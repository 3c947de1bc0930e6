"""Writes the Grafana dashboards beside this file from the panel tables below (run it after
editing them; a test holds the JSON equal to what this writes, and evaluates every panel's
query against a real Prometheus scraping a live daemon).

    python deploy/grafana/dashboards.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
P95 = "histogram_quantile(0.95, sum by (le, {by}) (rate({metric}_bucket{sel}[5m])))"

#: title, unit, PromQL (`{sel}` is the dashboard's label selector)
OVERVIEW = (
    ("Admissions/s by priority", "reqps",
     "sum by (priority) (rate(tasks_enqueued_total{sel}[1m]))"),
    ("Rejections/s by reason", "reqps",
     "sum by (reason) (rate(tasks_rejected_total{sel}[1m]))"),
    ("Queue depth by priority", "short", "sum by (priority) (queue_depth{sel})"),
    ("Queue wait p95 (ms) by priority", "ms",
     P95.format(by="priority", metric="queue_wait_ms", sel="{sel}")),
    ("Estimated wait for a new task (ms): the scaling signal", "ms",
     "max by (pool_id, priority) (queue_estimated_wait_ms{sel})"),
    ("Time to first token p95 (ms)", "ms",
     P95.format(by="pool_id", metric="latency_first_token_ms", sel="{sel}")),
    ("Tokens/s generated", "short", "sum by (pool_id) (rate(tokens_out_total{sel}[1m]))"),
    ("Replicas ready", "short", "sum by (pool_id) (replica_ready{sel})"),
    ("Slots busy / total", "percentunit",
     "sum by (pool_id) (replica_slots_busy{sel}) / sum by (pool_id) (replica_slots_total{sel})"),
    ("Replica restarts (15 m)", "short",
     "sum by (pool_id) (increase(replica_restarts_total{sel}[15m]))"),
    ("Tasks finished/s by state", "reqps",
     "sum by (state) (rate(tasks_finished_total{sel}[1m]))"),
    ("Placement decisions/s by reason", "reqps",
     "sum by (outcome) (rate(placement_decisions_total{sel}[1m]))"),
    ("Prefix cache hit ratio, estimated (prefix-aware pools)", "percentunit",
     "sum by (pool_id) (rate(prefix_cached_tokens_total{sel}[5m])) / "
     "sum by (pool_id) (rate(prefix_prompt_tokens_total{sel}[5m]))"),
)  # fmt: skip
TENANTS = (
    ("Tasks finished/s by tenant", "reqps",
     "sum by (tenant) (rate(tenant_tasks_finished_total{sel}[1m]))"),
    ("Tokens/s by tenant", "short", "sum by (tenant) (rate(tenant_tokens_out_total{sel}[1m]))"),
    ("Prompt tokens/s by tenant", "short",
     "sum by (tenant) (rate(tenant_tokens_in_total{sel}[1m]))"),
)  # fmt: skip
DASHBOARDS = {
    "overview": ("orchestratord — overview", OVERVIEW, None),
    "pool": ("orchestratord — one pool", OVERVIEW, "pool_id"),
    "tenant": ("orchestratord — tenants", TENANTS, "tenant"),
}


def queries(panels: tuple[tuple[str, str, str], ...], variable: str | None) -> list[str]:
    sel = f'{{{variable}=~"${variable}"}}' if variable else ""
    return [
        expr.replace("{sel}", sel).replace("{{", "{").replace("}}", "}") for _, _, expr in panels
    ]


def dashboard(
    uid: str, title: str, panels: tuple[tuple[str, str, str], ...], variable: str | None
) -> dict:
    exprs = queries(panels, variable)
    templating = []
    if variable:
        templating.append(
            {
                "name": variable,
                "type": "query",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": f"label_values({variable})",
                "includeAll": True,
                "multi": True,
                "refresh": 2,
            }
        )
    templating.insert(0, {"name": "datasource", "type": "datasource", "query": "prometheus"})
    return {
        "uid": f"orchestratord-{uid}", "title": title, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "tags": ["orchestratord"],
        "templating": {"list": templating},
        "panels": [
            {
                "id": i + 1, "type": "timeseries", "title": panel_title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": expr}],
            }
            for i, ((panel_title, unit, _), expr) in enumerate(zip(panels, exprs, strict=True))
        ],
    }  # fmt: skip


def rendered() -> dict[str, str]:
    return {
        f"{uid}.json": json.dumps(dashboard(uid, *spec), indent=2) + "\n"
        for uid, spec in DASHBOARDS.items()
    }


if __name__ == "__main__":
    for name, text in rendered().items():
        (HERE / name).write_text(text)
        print(f"wrote deploy/grafana/{name}")
