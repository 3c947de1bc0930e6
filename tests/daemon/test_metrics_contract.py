"""A real scrape after real traffic, linted against .specs/metrics/otel-prom.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci"))

import metrics_lint
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from orchestratord.telemetry.series import Family, SeriesCollector
from tests.helpers import mock_pool


def test_lint_json_is_derived_from_the_spec():
    """OC-METRICS-6001"""
    assert json.loads(metrics_lint.LINT.read_text()) == metrics_lint.from_spec()


async def test_scrape_after_traffic_conforms(start_daemon):
    """OC-METRICS-6001"""
    api = await start_daemon(
        mock_pool(
            "a",
            queue={"capacity": 1, "policy": "drop-lru"},
            replicas={"managed": {"count": 1, "slots": 1}},
        ),
        mock_pool("b", queue={"capacity": 1}, replicas={"managed": {"count": 2, "slots": 1}}),
    )
    # fail, cancel, evict, expire, complete, reject
    _, failed, _ = await api.submit(model="b-model", prompt="[[fail:1]]", max_tokens=3)
    await api.events(failed["task_id"])
    _, blocker, _ = await api.submit(model="a-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    await api.submit(model="a-model", prompt="victim", priority="batch")
    # admitted while pool a has finished nothing (an unknown service time never refuses a
    # deadline), then it expires in the queue behind the blocker
    _, late, _ = await api.submit(model="a-model", prompt="evicts", max_tokens=1, deadline_ms=5)
    await api.events(late["task_id"])
    await api.cancel(blocker["task_id"])
    _, done, _ = await api.submit(model="a-model", prompt="ok", max_tokens=3)
    await api.events(done["task_id"])
    _, b1, _ = await api.submit(model="b-model", prompt="[[stall:0]]")
    _, b2, _ = await api.submit(model="b-model", prompt="[[stall:0]]")
    await api.wait_state(b1["task_id"], "running")
    await api.wait_state(b2["task_id"], "running")
    await api.submit(model="b-model", prompt="queued")
    await api.submit(expect=429, model="b-model", prompt="rejected")
    await api.submit(expect=404, model="nope", prompt="x")
    status, scrape = await api.get("/metrics")
    assert status == 200
    rules = json.loads(metrics_lint.LINT.read_text())
    assert metrics_lint.lint(scrape, rules) == []
    assert 'tasks_finished_total{pool_id="a",state="evicted"} 1.0' in scrape
    assert 'tasks_finished_total{pool_id="a",state="expired"} 1.0' in scrape
    assert 'tasks_finished_total{pool_id="b",state="failed"} 1.0' in scrape
    assert 'tasks_rejected_total{pool_id="b",reason="queue_full"} 1.0' in scrape


def test_plain_series_expose_what_prometheus_clients_own_metrics_do():
    """OC-METRICS-6001: the daemon's lock-free series (`telemetry.series`) scrape exactly as
    prometheus-client's Counter, Gauge and Histogram do after the same changes — names,
    suffixes, `le` bounds (a value on a bound counts in it), order, removed series gone."""
    disable_created_metrics()  # (the daemon's families have no `_created` either)
    bounds = (1.0, 2.5, 10.0)
    theirs = CollectorRegistry()
    counter = Counter("jobs", "Jobs", ("pool", "state"), registry=theirs)
    gauge = Gauge("depth", "Depth", (), registry=theirs)
    histogram = Histogram("wait_ms", "Wait", ("pool",), buckets=bounds, registry=theirs)
    ours = [
        Family("counter", "jobs", "Jobs", ("pool", "state")),
        Family("gauge", "depth", "Depth", ()),
        Family("histogram", "wait_ms", "Wait", ("pool",), bounds),
    ]
    mine = CollectorRegistry()
    mine.register(SeriesCollector(ours))
    counter.labels("a", "done").inc()
    counter.labels("b", "done").inc(3)
    counter.labels("a", "failed").inc(0.5)
    counter.remove("b", "done")
    gauge.set_function(lambda: 7)
    for value in (0.5, 1.0, 2.6, 10.0, 11.0):
        histogram.labels("a").observe(value)
    ours[0].value(("a", "done")).inc()
    ours[0].value(("b", "done")).inc(3)
    ours[0].value(("a", "failed")).inc(0.5)
    del ours[0].series[("b", "done")]
    ours[1].value(()).set_function(lambda: 7)
    for value in (0.5, 1.0, 2.6, 10.0, 11.0):
        ours[2].distribution(("a",)).observe(value)
    assert generate_latest(mine).decode() == generate_latest(theirs).decode()
