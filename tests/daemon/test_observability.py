"""What operators see (issue 17): queue wait as the scaling signal, traces, reports."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from orchestrator_core.model import Priority
from orchestratord.telemetry import tracing
from pool_managerd.launchers import die_with_parent, free_port
from pool_managerd.probe import poll_until
from test_harness.engines.tgi_server import make_app
from tests.helpers import mock_pool


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_queue_wait_is_measured_and_the_expected_wait_is_exported(start_daemon):
    """OC-OBS-1401"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    pool = api.daemon.service.pools["mock"]
    _, first, _ = await api.submit(model="mock-model", prompt="warm up", max_tokens=2)
    await api.wait_state(first["task_id"], "completed")
    pool.estimator.observe(1000.0, 10)  # a slow task seen: the estimate is well above 0
    _, hold, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(hold["task_id"], "running")
    _, queued, _ = await api.submit(model="mock-model", prompt="waits", max_tokens=1)
    labels = (("pool_id", "mock"), ("priority", "interactive"))
    _, text = await api.get("/metrics")
    got = samples(text)
    # what a new interactive task would wait: one queued ahead on one busy slot
    expected = pool.estimator.predicted_start_ms(ahead=1, slots_total=1, slots_busy=1)
    assert (
        got[("queue_estimated_wait_ms", labels)]
        == expected
        == pool.estimated_wait_ms(Priority.INTERACTIVE)
    )
    assert expected >= 400
    assert got[("queue_wait_ms_count", labels)] == 2  # two tasks have started so far
    # the queue's depth and the leased slots, as they are when scraped
    busy = [v for (name, _), v in got.items() if name == "replica_slots_busy"]
    assert (got[("queue_depth", labels)], busy) == (1, [1])
    assert await api.cancel(hold["task_id"]) == 204
    await api.wait_state(queued["task_id"], "completed")
    _, text = await api.get("/metrics")
    after = samples(text)
    assert after[("queue_wait_ms_count", labels)] == 3
    assert after[("queue_depth", labels)] == 0
    assert after[("queue_wait_ms_sum", labels)] > got[("queue_wait_ms_sum", labels)]


CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
async def tgi_engine() -> AsyncIterator[str]:
    """The project's TGI protocol server, in this test's loop (it records `traceparent`)."""
    runner = web.AppRunner(make_app(max_concurrent=2))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    yield exporter
    tracing.configure(None)


def tgi_pool() -> dict[str, Any]:
    return {"id": "tgi", "engine": "tgi", "model": "tgi-model",
            "replicas": {"endpoints": []}}  # fmt: skip


async def test_a_task_is_one_trace_continuing_the_clients_and_reaching_the_engine(
    start_daemon, tgi_engine, spans
):
    """OC-OBS-1402"""
    pool = {**tgi_pool(), "replicas": {"endpoints": [tgi_engine]}}
    with capture_logs() as logs:
        api = await start_daemon(pool)
        body = {"model": "tgi-model", "prompt": "hello", "max_tokens": 3, "stream": True}
        headers = {"traceparent": TRACEPARENT}
        async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=headers) as r:
            assert r.status == 200
            task_id = r.headers["X-Task-Id"]
            assert b"event: end" in await r.read()
        await api.daemon.service.pools["tgi"].wait_idle()
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert set(finished) == {"task", "admission", "queue", "placement", "engine", "stream"}
    task = finished["task"]
    assert format(task.context.trace_id, "032x") == CLIENT_TRACE  # the client's trace
    assert format(task.parent.span_id, "016x") == CLIENT_SPAN
    assert task.attributes["task_id"] == task_id and task.attributes["tenant"] == "default"
    for name in ("admission", "queue", "placement", "engine", "stream"):
        span = finished[name]
        assert span.context.trace_id == task.context.trace_id
        assert span.parent.span_id == task.context.span_id, name
    assert finished["queue"].attributes["priority"] == "interactive"
    engine = finished["engine"]
    assert engine.attributes["replica_id"] == "tgi-r0" and engine.attributes["tokens_out"] == 3
    assert [e.name for e in engine.events] == ["first_token"]
    # the engine was asked with the engine span as its parent
    async with api.http.get(f"{tgi_engine}/_test/traceparents") as r:
        seen = await r.json()
    assert seen[-1] == f"00-{CLIENT_TRACE}-{format(engine.context.span_id, '016x')}-01"
    ended = [e for e in logs if e["event"] == "task ended" and e["task_id"] == task_id]
    assert ended[0]["trace_id"] == CLIENT_TRACE
    assert ended[0]["span_id"] == format(task.context.span_id, "016x")
    assert finished["placement"].attributes["reason"] == "least-loaded"
    assert engine.attributes["ttft_ms"] > 0


async def test_tracing_off_costs_no_spans_and_passes_the_clients_context_on(
    start_daemon, tgi_engine
):
    """OC-OBS-1402"""
    pool = {**tgi_pool(), "replicas": {"endpoints": [tgi_engine]}}
    api = await start_daemon(pool)
    body = {"model": "tgi-model", "prompt": "hello", "max_tokens": 2}
    headers = {"traceparent": TRACEPARENT}
    async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=headers) as r:
        task_id = (await r.json())["task_id"]
    await api.wait_state(task_id, "completed")
    assert api.daemon.service.book.get(task_id).spans is None
    async with api.http.get(f"{tgi_engine}/_test/traceparents") as r:
        assert (await r.json())[-1] == TRACEPARENT  # unchanged: the engine continues it
    bad = {"traceparent": "00-not-a-trace-01"}  # ignored, as the W3C spec says
    async with api.http.post(f"{api.base}/v1/tasks", json=body, headers=bad) as r:
        task_id = (await r.json())["task_id"]
    await api.wait_state(task_id, "completed")
    async with api.http.get(f"{tgi_engine}/_test/traceparents") as r:
        assert (await r.json())[-1] == TRACEPARENT  # nothing new was sent


ROOT = Path(__file__).resolve().parents[2]
#: Names in PromQL that are not metrics.
_PROMQL_WORDS = {"sum", "by", "rate", "max", "histogram_quantile", "increase", "count",
                 "clamp_min", "le", "or"}  # fmt: skip


def spec_families() -> dict[str, set[str]]:
    """name -> labels, from the metrics contract's table."""
    families = {}
    for line in (ROOT / ".specs/metrics/otel-prom.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1] in ("counter", "gauge", "histogram"):
            families[cells[0]] = {x.strip() for x in cells[3].split(",") if x.strip()}
    return families


def check_names(expr: str, families: dict[str, set[str]], recorded: set[str]) -> None:
    """Every metric an expression names is in the contract (or a recording rule), and
    every label it names is one of the contract's."""
    labels = set().union(*families.values()) | {"le"}
    # drop what is not a name: label values, dashboard variables, ranges, numbers
    bare = re.sub(r'"[^"]*"|\$\w+|\[[^\]]*\]|\b\d[\d.]*(e[-+]?\d+)?', "", expr)
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", bare):
        word, call = match.group(0).rstrip("( "), match.group(1)
        if call or word in _PROMQL_WORDS or word in labels or word in recorded:
            continue
        base = word if word in families else re.sub(r"_(total|bucket|sum|count)$", "", word)
        assert base in families, f"{word} in {expr!r} is not in the metrics contract"


async def prometheus_query(http: aiohttp.ClientSession, url: str, expr: str) -> list[Any]:
    async with http.get(f"{url}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]


async def wait_ready_pool(api: Any, pool_id: str) -> None:
    manager = api.daemon.service.pools[pool_id].manager
    async with asyncio.timeout(30):
        await manager.wait_for(lambda: manager.ready)


def rule_exprs() -> tuple[dict[str, str], dict[str, str]]:
    """(recording rules, alerts): name -> expression."""
    rules = yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
    recorded = {r["record"]: r["expr"] for g in rules for r in g["rules"] if "record" in r}
    alerts = {r["alert"]: r["expr"] for g in rules for r in g["rules"] if "alert" in r}
    return recorded, alerts


def test_dashboards_and_rules_are_checked_and_name_only_contract_metrics():
    """OC-OBS-1403"""
    from deploy.grafana.dashboards import DASHBOARDS, queries, rendered

    for name, text in rendered().items():  # the JSON is what the tables say
        assert (ROOT / "deploy/grafana" / name).read_text() == text, f"{name} is stale"
    rules_file = ROOT / "deploy/prometheus/rules.yml"
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    recorded, alerts = rule_exprs()
    assert set(alerts) >= {  # one an operator's question each (the spec's list)
        "OrchestratordQueueWaitHigh", "OrchestratordRejecting", "OrchestratordNoReplicaReady",
        "OrchestratordReplicasNotReady", "OrchestratordRestartLoop",
        "OrchestratordEngineErrors", "OrchestratordDeterminismFailure",
        "OrchestratordLoopSaturated",
    }  # fmt: skip
    panels = [e for _, panels, var in DASHBOARDS.values() for e in queries(panels, var)]
    families = spec_families()
    for expr in [*panels, *recorded.values(), *alerts.values()]:
        check_names(expr, families, set(recorded))


async def test_dashboards_and_alerts_work_against_a_real_prometheus(start_daemon, tmp_path):
    """OC-OBS-1403"""
    from deploy.grafana.dashboards import DASHBOARDS, queries

    rules_file = ROOT / "deploy/prometheus/rules.yml"
    recorded, alerts = rule_exprs()
    panels = [e for _, panels, var in DASHBOARDS.values() for e in queries(panels, var)]

    # a live daemon under a little load; one pool whose replica can never start (a fault)
    api = await start_daemon(
        mock_pool(placement={"prefix_aware": True, "block_bytes": 16}),
        mock_pool("broken", mock={"fail_start": True}, max_restarts=0),
        ready=False,
    )  # fmt: skip
    await wait_ready_pool(api, "mock")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_file)],
        "scrape_configs": [{"job_name": "orchestratord",
                            "static_configs": [{"targets": [f"127.0.0.1:{api.daemon.port}"]}]}],
    }  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def has(expr: str) -> bool:
                try:
                    return bool(await prometheus_query(http, url, expr))
                except aiohttp.ClientError:  # not listening yet
                    return False

            async def load() -> bool:  # until every panel and signal has series
                for i in range(4):
                    prompt = f"a shared system prompt, then {i}"  # whole blocks: prefixes
                    _, task, _ = await api.submit(model="mock-model", prompt=prompt, max_tokens=2)
                    await api.wait_state(task["task_id"], "completed")
                _, failing, _ = await api.submit(model="mock-model", prompt="[[fail:1]]")
                await api.wait_state(failing["task_id"], "failed")
                await api.submit(expect=400, model="mock-model", prompt="x", max_tokens=5000)
                for expr in [*panels, *recorded]:
                    if not await has(expr.replace('=~"$pool_id"', '=~".*"')
                                     .replace('=~"$tenant"', '=~".*"')):  # fmt: skip
                        return False
                return True

            async with asyncio.timeout(90):
                await poll_until(load, max_delay_s=1.0)
            for expr in alerts.values():  # each parses and evaluates
                await prometheus_query(http, url, expr)
            # the fault fires its alert: no replica of `broken` is Ready
            no_replica = alerts["OrchestratordNoReplicaReady"]
            firing = await prometheus_query(http, url, no_replica)
            assert [s["metric"]["pool_id"] for s in firing] == ["broken"]
    finally:
        prometheus.terminate()
        await prometheus.wait()


async def test_live_metrics_events_are_opt_in_and_bounded(start_daemon):
    """OC-OBS-1404"""
    api = await start_daemon(mock_pool(mock={"token_rate": 50}))
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 40, "stream": True}

    async def frames(**extra: Any) -> list[tuple[str, dict[str, Any]]]:
        async with api.http.post(f"{api.base}/v1/tasks", json={**body, **extra}) as r:
            text = (await r.read()).decode()
        out = []
        for frame in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line
                          and not line.startswith(":"))  # fmt: skip
            if "event" in fields:
                out.append((fields["event"], orjson.loads(fields["data"]), "id" in fields))
        return out

    plain = await frames()
    assert not [f for f in plain if f[0] == "metrics"]  # opt-in
    got = await frames(stream_metrics_ms=250)
    metrics = [f for f in got if f[0] == "metrics"]
    tokens = [f for f in got if f[0] == "token"]
    assert metrics and all(not has_id for _, _, has_id in metrics)  # outside the event ids
    # bounded: consecutive ones are at least 250 ms of the stream's own clock apart
    decoded = [m[1]["decode_ms_so_far"] for m in metrics if "decode_ms_so_far" in m[1]]
    assert all(b - a >= 249 for a, b in itertools.pairwise(decoded))
    assert len(decoded) >= 2  # the stream lasts at least 780 ms: 40 tokens at 50/s
    last = metrics[-1][1]
    assert last["replica_id"] == "mock-r0" and 0 < last["tokens_out"] <= len(tokens)
    assert last["queue_wait_ms"] >= 0 and "tokens_per_s" in last
    _, done, _ = await api.submit(model="mock-model", prompt="x", max_tokens=1)
    async with api.http.get(f"{api.base}/v1/tasks/{done['task_id']}/stream?metrics_ms=10") as r:
        assert r.status == 400 and (await r.json())["field"] == "metrics_ms"


async def test_a_traced_tasks_log_lines_carry_its_trace(start_daemon, spans):
    """OC-OBS-1402"""
    with capture_logs() as logs:
        api = await start_daemon(mock_pool())
        _, task, _ = await api.submit(model="mock-model", prompt="[[fail:1]]")
        await api.wait_state(task["task_id"], "failed")
    mine = [e for e in logs if e.get("task_id") == task["task_id"]]
    assert {e["event"] for e in mine} >= {"engine error", "task ended"}
    traces = {e["trace_id"] for e in mine}
    assert len(traces) == 1 and len(traces.pop()) == 32
    exported = {s.name: s for s in spans.get_finished_spans()}
    assert exported["engine"].status.status_code.name == "ERROR"
