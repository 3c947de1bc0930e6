"""The data plane over real HTTP on 127.0.0.1 against mock pools."""

from __future__ import annotations

import asyncio
import json

from tests.helpers import mock_pool, orchctl
from worker_adapters.mock import MockAdapter, token_stream


async def test_admission_stream_end_and_status(start_daemon):
    """OC-CTRL-2001, OC-CTRL-2002, OC-CTRL-2003, OC-CTRL-2013"""
    api = await start_daemon(mock_pool())
    _status, body, headers = await api.submit(
        model="mock-model", prompt="hello", max_tokens=6, seed=7
    )
    assert set(body) == {"task_id", "queue_position", "predicted_start_ms", "stream_url"}
    assert body["queue_position"] == 0 and body["predicted_start_ms"] >= 0
    assert body["stream_url"] == f"/v1/tasks/{body['task_id']}/stream"
    assert headers["X-Correlation-Id"]
    events = await api.events(body["task_id"])
    names = [e[0] for e in events]
    assert names == ["started"] + ["token"] * 6 + ["end"]
    assert [e[1] for e in events] == list(range(8))  # every event has an increasing id
    started = events[0][2]
    assert set(started) >= {
        "queue_position",
        "predicted_start_ms",
        "pool_id",
        "replica_id",
        "engine",
        "engine_version",
    }
    assert started["pool_id"] == "mock" and started["engine"] == "mock"
    tokens = [e[2] for e in events if e[0] == "token"]
    assert [t["i"] for t in tokens] == list(range(6))
    expected = token_stream(7, "hello", 6)
    assert [t["t"] for t in tokens] == expected
    end = events[-1][2]
    assert end["tokens_out"] == 6 and end["finish_reason"] == "length" and end["decode_ms"] >= 0
    st = await api.status(body["task_id"])
    assert st["state"] == "completed" and st["output"] == "".join(expected)
    assert st["tokens_out"] == 6 and st["finish_reason"] == "length"


async def test_correlation_id_echoed_on_every_response(start_daemon):
    """OC-CTRL-2013"""
    api = await start_daemon(mock_pool())
    for method, path in [("GET", "/healthz"), ("GET", "/v1/tasks/nope"), ("POST", "/v1/tasks")]:
        async with api.http.request(
            method, api.base + path, headers={"X-Correlation-Id": "abc-123"}
        ) as r:
            assert r.headers["X-Correlation-Id"] == "abc-123"
    async with api.http.get(api.base + "/v1/pools") as r:
        assert len(r.headers["X-Correlation-Id"]) >= 16


async def test_reject_policy_answers_429_with_backoff_headers(start_daemon):
    """OC-CTRL-2004"""
    api = await start_daemon(
        mock_pool(
            queue={"capacity": 1, "policy": "reject"},
            replicas={"managed": {"count": 1, "slots": 1}},
        )
    )
    _, running, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(running["task_id"], "running")
    await api.submit(model="mock-model", prompt="queued")
    _status, body, headers = await api.submit(expect=429, model="mock-model", prompt="one more")
    assert body["code"] == "ADMISSION_REJECT" and body["retriable"] is True
    assert body["policy_label"] == "reject" and body["retry_after_ms"] >= 0
    assert int(headers["Retry-After"]) >= 1
    assert int(headers["X-Backoff-Ms"]) == body["retry_after_ms"]


async def test_drop_lru_victim_stream_ends_with_typed_error(start_daemon):
    """OC-CTRL-2005"""
    api = await start_daemon(
        mock_pool(
            queue={"capacity": 2, "policy": "drop-lru"},
            replicas={"managed": {"count": 1, "slots": 1}},
        )
    )
    _, blocker, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    _, old_batch, _ = await api.submit(model="mock-model", prompt="a", priority="batch")
    await api.submit(model="mock-model", prompt="b", priority="batch")
    await api.submit(model="mock-model", prompt="c", priority="interactive")
    events = await api.events(old_batch["task_id"])
    assert [e[0] for e in events] == ["error"]
    assert events[0][2]["code"] == "QUEUE_FULL_DROP_LRU"
    assert events[0][2]["retriable"] is True
    assert (await api.status(old_batch["task_id"]))["state"] == "evicted"


async def test_interactive_overtakes_queued_batch(start_daemon):
    """OC-CTRL-2006"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    _, blocker, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    _, batch, _ = await api.submit(model="mock-model", prompt="[[stall:0]] b", priority="batch")
    _, inter, _ = await api.submit(model="mock-model", prompt="[[stall:0]] i")
    assert inter["queue_position"] == 0
    assert (await api.status(batch["task_id"]))["queue_position"] == 1
    assert await api.cancel(blocker["task_id"]) == 204
    await api.wait_state(inter["task_id"], "running")
    assert (await api.status(batch["task_id"]))["state"] == "queued"
    await api.cancel(inter["task_id"])
    await api.wait_state(batch["task_id"], "running")


async def test_cancel_queued_task_leaves_queue_at_once(start_daemon):
    """OC-CTRL-2007"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    _, blocker, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    _, queued, _ = await api.submit(model="mock-model", prompt="waiting")
    assert await api.cancel(queued["task_id"]) == 204
    st = await api.status(queued["task_id"])
    assert st["state"] == "canceled" and st["queue_position"] is None
    _, pool = await api.get("/v1/pools/mock")
    assert pool["queue_depth"] == {"interactive": 0, "batch": 0}
    events = await api.events(queued["task_id"])
    assert [e[0] for e in events] == ["end"] and events[0][2]["finish_reason"] == "canceled"
    assert await api.cancel(queued["task_id"]) == 204  # idempotent
    assert await api.cancel("no-such-task") == 404


async def test_cancel_running_task_frees_slot_and_no_token_follows(start_daemon):
    """OC-CTRL-2008, OC-CTRL-2015"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    _, task, _ = await api.submit(model="mock-model", prompt="[[stall:3]]", max_tokens=50)
    tid = task["task_id"]
    before = await api.events(tid, until="token")
    seen = [e for e in before]
    # read up to the third token, then cancel while the engine holds the slot
    async with api.http.get(f"{api.base}/v1/tasks/{tid}/stream") as r:
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            if buf.count(b"event: token") == 3:
                break
    assert await api.cancel(tid) == 204
    events = await api.events(tid)
    names = [e[0] for e in events]
    assert names[-1] == "end" and events[-1][2]["finish_reason"] == "canceled"
    assert names.count("token") == 3 and "token" not in names[names.index("end") :]
    assert seen[0][0] == "started"
    # the slot is free again: a new task runs at once on the single-slot replica
    _, nxt, _ = await api.submit(model="mock-model", prompt="after", max_tokens=2)
    assert [e[0] for e in await api.events(nxt["task_id"])][-1] == "end"
    service = api.daemon.service
    assert all(r.busy == 0 for r in service.pools["mock"].manager.replicas)


async def test_last_event_id_resumes_and_several_subscribers_share(start_daemon):
    """OC-CTRL-2009, OC-CTRL-2010"""
    api = await start_daemon(mock_pool())
    _, task, _ = await api.submit(model="mock-model", prompt="resume me", max_tokens=10, seed=1)
    tid = task["task_id"]
    first, second = await asyncio.gather(api.events(tid), api.events(tid))
    assert first == second and len(first) == 12
    resumed = await api.events(tid, last_event_id=4)
    assert resumed == first[5:]
    assert await api.events(tid, last_event_id=11) == []
    async with api.http.get(
        f"{api.base}/v1/tasks/{tid}/stream", headers={"Last-Event-ID": "x"}
    ) as r:
        assert r.status == 400 and (await r.json())["field"] == "Last-Event-ID"


async def test_stream_memory_is_bounded_and_gap_is_reported(start_daemon):
    """OC-CTRL-2009"""
    api = await start_daemon(mock_pool(), stream_buffer_events=16)
    _, task, _ = await api.submit(model="mock-model", prompt="long", max_tokens=200)
    tid = task["task_id"]
    service = api.daemon.service
    await service.pools["mock"].wait_idle()  # the whole output went through the buffer
    rec = service.book.get(tid)
    assert (await api.status(tid))["state"] == "completed"
    assert len(rec.stream._events) == 16
    for resume in ({"Last-Event-ID": "3"}, {}):  # a resume, and a reader from the start
        async with api.http.get(f"{api.base}/v1/tasks/{tid}/stream", headers=resume) as r:
            gap = await r.json()
            assert r.status == 410 and gap["code"] == "STREAM_GAP"
            assert gap["first_retained"] == 186 and "Last-Event-ID: 185" in gap["message"]
    tail = await api.events(tid, last_event_id=185)
    assert [e[1] for e in tail] == list(range(186, 202))


async def test_two_hundred_concurrent_streams_complete_in_order(start_daemon, monkeypatch):
    """OC-CTRL-2011, OC-CTRL-2015"""
    active: dict[int, int] = {}
    peak: dict[int, int] = {}
    real_stream = MockAdapter.stream

    async def counted(self, request):
        key = id(self)
        active[key] = active.get(key, 0) + 1
        peak[key] = max(peak.get(key, 0), active[key])
        try:
            async for event in real_stream(self, request):
                yield event
        finally:
            active[key] -= 1

    monkeypatch.setattr(MockAdapter, "stream", counted)
    api = await start_daemon(
        mock_pool(queue={"capacity": 256}, replicas={"managed": {"count": 4, "slots": 8}})
    )

    async def one(i: int) -> None:
        _, task, _ = await api.submit(model="mock-model", prompt=f"p{i}", max_tokens=32, seed=i)
        events = await api.events(task["task_id"])
        tokens = [e[2] for e in events if e[0] == "token"]
        assert [t["i"] for t in tokens] == list(range(32))
        assert [t["t"] for t in tokens] == token_stream(i, f"p{i}", 32)
        assert events[-1][0] == "end"

    await asyncio.gather(*(one(i) for i in range(200)))
    # engines never saw more concurrent requests than their slots, and all were used
    assert len(peak) == 4 and max(peak.values()) <= 8


async def test_deadline_expires_queued_task_with_typed_error(start_daemon):
    """OC-CTRL-2020"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    _, blocker, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(blocker["task_id"], "running")
    _, late, _ = await api.submit(model="mock-model", prompt="x", deadline_ms=30)
    events = await api.events(late["task_id"])  # woken by the deadline timer, not a poll
    assert [e[0] for e in events] == ["error"] and events[0][2]["code"] == "DEADLINE_UNMET"
    assert (await api.status(late["task_id"]))["state"] == "expired"


async def test_engine_reset_before_first_token_is_retried_after_is_reported(start_daemon):
    """OC-CTRL-2021"""
    api = await start_daemon(mock_pool(max_retries=1))
    _, early, _ = await api.submit(model="mock-model", prompt="[[fail:0]]", max_tokens=3)
    events = await api.events(early["task_id"])
    # retried once (a second `started`), then reported: never a silent hang
    assert [e[0] for e in events] == ["started", "started", "error"]
    assert events[-1][2]["code"] == "WORKER_RESET" and events[-1][2]["retriable"] is True
    _, late, _ = await api.submit(model="mock-model", prompt="[[fail:2]]", max_tokens=5)
    events = await api.events(late["task_id"])
    assert [e[0] for e in events] == ["started", "token", "token", "error"]
    assert events[-1][2]["code"] == "WORKER_RESET"
    assert (await api.status(late["task_id"]))["state"] == "failed"


async def test_a_retry_runs_on_another_replica_even_one_ready_and_preferred(start_daemon):
    """OC-CTRL-2021, OC-CORE-1051"""
    api = await start_daemon(
        mock_pool(max_retries=1, replicas={"managed": {"count": 2, "slots": 1}})
    )
    # r0 refuses as overloaded: it stays Ready, and the task prefers it
    _, task, _ = await api.submit(
        model="mock-model", prompt="[[reject:mock-r0]] x", max_tokens=3,
        placement={"mode": "prefer", "replica_id": "mock-r0"},
    )  # fmt: skip
    events = await api.events(task["task_id"])
    starts = [data["replica_id"] for name, _, data in events if name == "started"]
    assert starts == ["mock-r0", "mock-r1"] and events[-1][0] == "end"


async def test_stalled_engine_times_out_with_decode_timeout(start_daemon):
    """OC-CTRL-2023"""
    api = await start_daemon(
        mock_pool(token_timeout_s=0.05, replicas={"managed": {"count": 1, "slots": 1}})
    )
    _, task, _ = await api.submit(model="mock-model", prompt="[[stall:1]]", max_tokens=5)
    events = await api.events(task["task_id"])
    assert [e[0] for e in events] == ["started", "token", "error"]
    assert events[-1][2]["code"] == "DECODE_TIMEOUT"
    service = api.daemon.service
    assert service.pools["mock"].manager.replicas[0].busy == 0


async def test_sessions_track_affinity_and_can_be_deleted(start_daemon):
    """OC-CTRL-2018"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 2, "slots": 2}}))
    _, t1, _ = await api.submit(model="mock-model", prompt="turn 1", session_id="s1")
    first = await api.events(t1["task_id"])
    _, t2, _ = await api.submit(model="mock-model", prompt="turn 2", session_id="s1")
    second = await api.events(t2["task_id"])
    assert first[0][2]["replica_id"] == second[0][2]["replica_id"]  # warm KV wins
    status, info = await api.get("/v1/sessions/s1")
    assert status == 200 and info["turns"] == 2 and info["replica_id"] == first[0][2]["replica_id"]
    assert 0 < info["kv_warmth"] <= 1 and info["ttl_ms"] > 0
    async with api.http.delete(f"{api.base}/v1/sessions/s1") as r:
        assert r.status == 204
    assert (await api.get("/v1/sessions/s1"))[0] == 404


async def test_tasks_are_listed_oldest_first_and_filtered(start_daemon):
    """OC-CTRL-2032, OC-CLI-5006"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}),
                             mock_pool("other"))  # fmt: skip
    ids = {}
    for name, body in (
        ("running", {"prompt": "[[stall:0]] hold the slot"}),
        ("batch", {"prompt": "b", "priority": "batch"}),
        ("interactive", {"prompt": "i"}),
    ):
        ids[name] = (await api.submit(model="mock-model", max_tokens=2, **body))[1]["task_id"]
        if name == "running":
            await api.wait_state(ids[name], "running")
    ids["done"] = (await api.submit(model="other-model", prompt="d", max_tokens=2))[1]["task_id"]
    await api.wait_state(ids["done"], "completed")

    async def listed(query: str = "") -> dict:
        status, body = await api.get(f"/v1/tasks{query}")
        assert status == 200, body
        return body

    live = await listed()  # the queued and running ones, oldest first, with their positions
    assert [(t["task_id"], t["state"], t["queue_position"]) for t in live["tasks"]] == [
        (ids["running"], "running", None), (ids["batch"], "queued", 1),
        (ids["interactive"], "queued", 0),
    ]  # fmt: skip
    assert live["truncated"] is False
    first = live["tasks"][0]
    assert (first["pool_id"], first["priority"], first["tenant"]) == (
        "mock",
        "interactive",
        "default",
    )
    assert first["replica_id"] == "mock-r0" and first["age_ms"] >= 0
    assert [t["task_id"] for t in (await listed("?state=completed"))["tasks"]] == [ids["done"]]
    assert [t["task_id"] for t in (await listed("?state=all&pool_id=other"))["tasks"]] == [
        ids["done"]
    ]
    assert [t["task_id"] for t in (await listed("?state=queued,completed"))["tasks"]] == [
        ids["batch"], ids["interactive"], ids["done"]
    ]  # fmt: skip
    oldest = await listed("?limit=1")
    assert [t["task_id"] for t in oldest["tasks"]] == [ids["running"]] and oldest["truncated"]
    for query, status, field in (
        ("?state=bogus", 400, "state"), ("?limit=0", 400, "limit"),
        ("?limit=1001", 400, "limit"), ("?pool_id=nope", 404, "pool_id"),
    ):  # fmt: skip
        got, error = await api.get(f"/v1/tasks{query}")
        assert (got, error["field"]) == (status, field), error

    code, out, err = await orchctl(api.base, "tasks")  # kubectl's table
    assert code == 0, err
    head, *rows = out.splitlines()
    assert head.split() == [
        "TASK", "POOL", "STATE", "PRIORITY", "TENANT", "POSITION", "REPLICA", "TOKENS", "AGE"
    ]  # fmt: skip
    assert [row.split()[:6] for row in rows] == [
        [ids["running"], "mock", "running", "interactive", "default", "-"],
        [ids["batch"], "mock", "queued", "batch", "default", "1"],
        [ids["interactive"], "mock", "queued", "interactive", "default", "0"],
    ]
    code, out, _ = await orchctl(api.base, "tasks", "--state", "completed", "--json")
    assert [t["task_id"] for t in json.loads(out)["tasks"]] == [ids["done"]]
    code, out, err = await orchctl(api.base, "tasks", "--pool", "mock", "--limit", "2")
    assert len(out.splitlines()) == 3 and "more match" in err
    code, _, err = await orchctl(api.base, "tasks", "--state", "bogus")
    assert code == 4 and "state" in err


async def test_an_operator_lists_and_cancels_a_tenants_work_in_one_go(start_daemon):
    """OC-CTRL-2032, OC-CLI-5009: one careless tenant's queue is cleared by selection, and
    nobody else's work is touched."""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    ids: dict[str, list[str]] = {"careless": [], "careful": []}
    for tenant in ("careful", "careless", "careless", "careful"):
        body = {"model": "mock-model", "prompt": "[[stall:0]]", "max_tokens": 2}
        async with api.http.post(
            f"{api.base}/v1/tasks", json=body, headers={"X-Tenant-Id": tenant}
        ) as r:
            assert r.status == 202
            ids[tenant].append((await r.json())["task_id"])
    await api.wait_state(ids["careful"][0], "running")  # the rest wait in the queue

    _, listed = await api.get("/v1/tasks?tenant=careless")
    assert [t["task_id"] for t in listed["tasks"]] == ids["careless"]
    _, listed = await api.get("/v1/tasks?tenant=nobody")
    assert listed == {"tasks": [], "truncated": False}

    for refused in ((), ("--state", "queued"), (ids["careful"][0], "--all")):
        code, _, err = await orchctl(api.base, "cancel", *refused)
        assert code == 2 and "name task ids, or select" in err  # never everything by accident
    code, out, err = await orchctl(api.base, "cancel", "--tenant", "careless")
    assert code == 0, err
    assert out.splitlines() == [f"canceled {task_id}" for task_id in ids["careless"]]
    for task_id in ids["careless"]:
        assert (await api.status(task_id))["state"] == "canceled"
    for task_id, state in zip(ids["careful"], ("running", "queued"), strict=True):
        assert (await api.status(task_id))["state"] == state
    code, out, err = await orchctl(api.base, "cancel", "--tenant", "careless")
    assert code == 0 and out == "" and "no tasks matched" in err

    code, out, _ = await orchctl(api.base, "cancel", "--pool", "mock", "--state", "queued")
    assert out.splitlines() == [f"canceled {ids['careful'][1]}"]
    assert (await api.status(ids["careful"][0]))["state"] == "running"
    code, out, _ = await orchctl(api.base, "cancel", "--all")
    assert out.splitlines() == [f"canceled {ids['careful'][0]}"]
