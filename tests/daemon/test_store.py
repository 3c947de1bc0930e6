"""The durable task store: a real `orchestratord serve` killed with SIGKILL and started
again on the same state directory (a real SQLite file), and the store's own refusals."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
import yaml

from orchestratord.service.admission import Submission
from orchestratord.service.journal import tokens_of
from orchestratord.service.output import Output
from orchestratord.service.streams import TOKEN
from orchestratord.store import Snapshot, StoreError, TaskRow
from orchestratord.store.postgres import MIGRATIONS as PG_MIGRATIONS
from orchestratord.store.postgres import PostgresStore
from orchestratord.store.sqlite import CHECKPOINT_EVERY, MIGRATIONS, SqliteStore
from pool_managerd.launchers import free_port
from tests.helpers import BIN, Event, Served, journal, mock_pool, state_db


def _pools(*, stall_a: int | None, stall_b: int | None, start_delay_s: float = 0.0):
    common = {"queue": {"capacity": 128}, "replicas": {"managed": {"count": 1, "slots": 10}}}
    return tuple(
        mock_pool(
            pool, **common, mock={"stall_after_tokens": stall, "start_delay_s": start_delay_s}
        )
        for pool, stall in (("a", stall_a), ("b", stall_b))
    )


async def _positions(served: Served, ids: list[str]) -> list[str]:
    """`ids` in the order their pool's queue holds them."""
    where = {tid: (await served.status(tid))["queue_position"] for tid in ids}
    assert all(p is not None for p in where.values()), where
    return sorted(ids, key=lambda tid: where[tid])


async def test_sigkill_loses_nothing_queued_reruns_unstreamed_and_ends_streamed(
    served, store_backend
):
    """OC-STORE-1002, OC-STORE-1001, OC-STORE-1007, OC-STORE-1009"""
    await served.start(*_pools(stall_a=0, stall_b=2))
    # 10 running on each pool: a's have streamed nothing, b's have streamed tokens
    running: dict[str, list[str]] = {"a": [], "b": []}
    for pool in ("a", "b"):
        for i in range(10):
            task = await served.submit(model=f"{pool}-model", prompt=f"r{pool}{i}", max_tokens=5)
            running[pool].append(task["task_id"])
    running_a, running_b = running["a"], running["b"]
    queued: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(100):  # 200 queued, over two tenants and both priorities
        for pool in ("a", "b"):
            body = {"model": f"{pool}-model", "prompt": f"q{pool}{i}", "max_tokens": 5,
                    "priority": "batch" if i % 3 == 0 else "interactive"}  # fmt: skip
            async with served.http.post(
                f"{served.url}/v1/tasks", json=body, headers={"X-Tenant-Id": f"t{i % 2}"}
            ) as r:
                assert r.status == 202
                queued[pool].append((await r.json())["task_id"])
    for tid in running_a:
        await served.events(tid, until="started")
    for tid in running_b:
        await served.events(tid, tokens=1)
    order = {pool: await _positions(served, ids) for pool, ids in queued.items()}
    await served.kill()

    # back, with replicas that never become ready: nothing runs, the queues are as they were
    await served.start(*_pools(stall_a=None, stall_b=None, start_delay_s=3600))
    after_a = await _positions(served, running_a + queued["a"])
    assert [t for t in after_a if t in running_a] == running_a  # reruns keep their order
    assert [t for t in after_a if t not in running_a] == order["a"]
    assert await _positions(served, queued["b"]) == order["b"]
    for tid in running_b:
        status = await served.status(tid)
        assert status["state"] == "failed", status
        assert status["error"]["code"] == "DAEMON_RESTART" and status["error"]["retriable"]
    await served.kill()  # and once more, mid-recovery

    await served.start(*_pools(stall_a=None, stall_b=None))
    for tid in running_a + queued["a"] + queued["b"]:
        events = await served.events(tid)
        assert [e[0] for e in events] == ["started"] + ["token"] * 5 + ["end"], (tid, events)
        assert (await served.status(tid))["state"] == "completed"
    for tid in running_b:
        # the stream as journaled when its first token went out to a client — its start
        # (a non-strict task's output is journaled with its end) — then the error
        events = await served.events(tid)
        assert [(e[0], e[1]) for e in events] == [("started", 0), ("error", 1)]
        assert json.loads(events[-1][2])["code"] == "DAEMON_RESTART"
        # a client that saw both tokens before the kill resumes straight to the ending
        assert await served.events(tid, after=2) == events[-1:]


async def test_a_task_whose_client_left_with_the_daemon_is_canceled_unless_read(
    served, store_backend
):
    """OC-STORE-1010: the clients of an OpenAI request (streamed or not) and of a one-request
    native stream leave with the killed daemon; a two-request task's client never waited."""
    pool = mock_pool(
        "a", queue={"capacity": 8}, replicas={"managed": {"count": 1, "slots": 1}},
        mock={"stall_after_tokens": 0},
    )  # fmt: skip
    await served.start(pool)
    url, chat = served.url, {"model": "a-model", "messages": [{"role": "user", "content": "hi"}]}
    streamed = await served.http.post(f"{url}/v1/chat/completions", json={**chat, "stream": True})
    running = streamed.headers["X-Task-Id"]
    await served.events(running, until="started")  # it holds the slot (its engine stalls)
    native = await served.http.post(
        f"{url}/v1/tasks", json={"model": "a-model", "prompt": "x", "stream": True}
    )
    one_request = native.headers["X-Task-Id"]
    unanswered = asyncio.create_task(served.http.post(f"{url}/v1/chat/completions", json=chat))
    while await _depth(served) < 2:  # (it says nothing before its answer)
        pass
    two_request = (await served.submit(model="a-model", prompt="y", max_tokens=2))["task_id"]
    await served.kill()
    with pytest.raises(aiohttp.ClientError):
        await unanswered
    streamed.close()
    native.close()

    never_ready = replace_mock(pool, start_delay_s=3600)  # nothing runs after a restart
    await served.start(never_ready, server={"abandon_grace_s": 600})
    assert await _depth(served) == 4  # all back, their clients' grace not over
    for task_id in (running, one_request, two_request):
        assert (await served.status(task_id))["state"] == "queued"
    await served.kill()

    await served.start(never_ready, server={"abandon_grace_s": 0})
    assert await _depth(served) == 1  # no grace: only the two-request task is left
    assert (await served.status(two_request))["state"] == "queued"
    for task_id in (running, one_request):
        status = await served.status(task_id)
        assert status["state"] == "canceled", status


async def _depth(served: Served) -> int:
    async with served.http.get(f"{served.url}/v1/pools/a") as r:
        return sum((await r.json())["queue_depth"].values())


def replace_mock(pool: dict, **mock: object) -> dict:
    return {**pool, "mock": {**pool["mock"], **mock}}


async def test_a_task_is_journaled_as_streamed_when_its_tokens_first_reach_a_client(
    start_daemon,
):
    """OC-STORE-1002, OC-STORE-1009"""
    api = await start_daemon(mock_pool(mock={"stall_after_tokens": 2}))
    _, body, _ = await api.submit(model="mock-model", prompt="nobody watches yet", max_tokens=5)
    task_id = body["task_id"]
    rec = api.daemon.service.book.get(task_id)
    seen = 0
    async for batch in rec.stream.read():  # the daemon's own buffer: no client
        seen += sum(event[0] == TOKEN for event in batch)
        if seen == 2:
            break
    with sqlite3.connect(state_db()) as db:  # a restart would run it again, unseen
        assert db.execute("SELECT streamed FROM tasks WHERE id = ?", (task_id,)).fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM task_output").fetchone() == (0,)
    events = await api.events(task_id, until="token")  # a client sees its first token
    assert [e[0] for e in events] == ["started", "token"]
    with sqlite3.connect(state_db()) as db:  # ... only once a restart would know
        streamed, started = db.execute(
            "SELECT streamed, started FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        assert streamed == 1 and json.loads(started) == events[0][2]
        # its output goes with its end (no write per delivery)
        assert db.execute("SELECT COUNT(*) FROM task_output").fetchone() == (0,)


def _strict_pool(stall: int | None) -> dict[str, Any]:
    return mock_pool(
        "s", determinism="strict", mock={"stall_after_tokens": stall},
        replicas={"managed": {"count": 1, "slots": 1}},
    )  # fmt: skip


STRICT_TASK = {"model": "s-model", "prompt": "resume me exactly", "max_tokens": 150, "seed": 7}


async def test_a_strict_stream_resumes_byte_identical_after_sigkill(served, store_backend):
    """OC-STORE-1003"""
    await served.start(_strict_pool(stall=100))
    tid = (await served.submit(**STRICT_TASK))["task_id"]
    before = await served.events(tid, tokens=100)
    await served.kill()
    await served.start(_strict_pool(stall=None))
    resumed = await served.events(tid, after=before[-1][1])
    reference = await served.events((await served.submit(**STRICT_TASK))["task_id"])

    def tokens(events: list[Event]) -> list[Event]:
        return [e for e in events if e[0] == "token"]

    assert len(tokens(before)) == 100 and len(tokens(reference)) == 150
    assert tokens(before + resumed) == tokens(reference)  # ids and data, byte for byte
    end, ref_end = json.loads(resumed[-1][2]), json.loads(reference[-1][2])
    assert resumed[-1][:2] == reference[-1][:2] == ("end", 151)
    assert {**end, "decode_ms": 0} == {**ref_end, "decode_ms": 0}


async def test_a_strict_rerun_that_diverges_fails_loudly(served, store_backend):
    """OC-STORE-1003"""
    await served.start(_strict_pool(stall=100))
    tid = (await served.submit(**STRICT_TASK))["task_id"]
    before = await served.events(tid, tokens=100)
    await served.kill()
    # what was journaled is not what the engine repeats: tamper with the last journaled
    # token (checkpoints after the first are not awaited, so which chunk is last depends
    # on when the kill landed; chunk 0 always is there, journaled before any token left)
    with journal(served) as db:
        number, tokens = db.execute(
            "SELECT chunk, tokens FROM task_output ORDER BY chunk DESC LIMIT 1"
        ).fetchone()
        *kept, (tampered, _, ids) = tokens_of([tokens])
        chunk = Output()
        chunk.extend([*kept, (tampered, "tampered", ids)])
        mark = "%s" if served.store else "?"
        db.execute(
            f"UPDATE task_output SET tokens = {mark} WHERE chunk = {mark}",
            (orjson.dumps(chunk.columns()).decode(), number),
        )
    await served.start(_strict_pool(stall=None))
    resumed = await served.events(tid, after=before[-1][1])
    assert resumed[-1][0] == "error"
    error = json.loads(resumed[-1][2])
    assert error["code"] == "DAEMON_RESTART"
    assert f"diverged at token {tampered} " in error["message"]


async def test_a_finished_task_keeps_status_and_stream_across_sigkill(served, store_backend):
    """OC-STORE-1004, OC-STORE-1007, OC-STORE-1009: reading it again after the restart
    writes nothing (the journal already says its tokens may have reached a client)."""
    await served.start(mock_pool())
    tid = (await served.submit(model="mock-model", prompt="kept", max_tokens=6))["task_id"]
    events = await served.events(tid)
    status = await served.status(tid)
    await served.kill()
    await served.start(mock_pool())
    commits = await _commits(served)
    assert await served.status(tid) == status
    assert await served.events(tid, after=2) == events[3:]
    assert await served.events(tid) == events
    assert await _commits(served) == commits


async def _commits(served: Served) -> float:
    """Group commits the served daemon has made (its `/metrics`)."""
    async with served.http.get(f"{served.url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("store_commit_latency_ms_count"):
                return float(line.split()[-1])
    raise AssertionError("no store_commit_latency_ms_count in /metrics")


async def _serve_fails(tmp_path: Path, config: dict[str, Any]) -> tuple[int, list[str]]:
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchestratord", "serve", "--config", str(tmp_path / "c.yaml"), "--port", "0",
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in err.decode().splitlines() if line.startswith("error:")]
    return proc.returncode or 0, lines


@pytest.mark.parametrize("damage", ["corrupt", "not-a-dir", "newer-schema"])
async def test_an_unusable_store_exits_2_with_one_line(tmp_path, damage):
    """OC-STORE-1005"""
    state = tmp_path / "state"
    if damage == "corrupt":
        state.mkdir()
        (state / "orchestratord.db").write_bytes(b"this is not a database, " * 100)
    elif damage == "not-a-dir":
        state.write_text("a file where the state dir should be")
    else:
        state.mkdir()
        with sqlite3.connect(state / "orchestratord.db") as db:
            db.execute("PRAGMA user_version = 99")
    code, errors = await _serve_fails(
        tmp_path, {"server": {"state_dir": str(state)}, "pools": [mock_pool()]}
    )
    assert code == 2 and len(errors) == 1, errors
    assert str(state) in errors[0]


async def test_a_second_daemon_on_the_same_state_dir_exits_2(served, tmp_path):
    """OC-STORE-1005"""
    await served.start(mock_pool())
    code, errors = await _serve_fails(tmp_path, {"pools": [mock_pool()]})
    assert code == 2 and errors and "in use by another orchestratord" in errors[0]


async def test_a_full_store_refuses_new_work_and_finishes_accepted_work(start_daemon):
    """OC-STORE-1005"""
    api = await start_daemon(
        mock_pool(mock={"stall_after_tokens": 0}, replicas={"managed": {"slots": 64}}),
        store={"max_bytes": 65536},
    )
    accepted, refused = [], None
    for i in range(64):
        status, body, _ = await api.submit(
            expect=None, model="mock-model", prompt=f"{i} " + "x" * 4000, max_tokens=2
        )
        if status != 202:
            refused = (status, body)
            break
        accepted.append(body["task_id"])
    assert accepted and refused is not None, "the store never filled"
    assert refused[0] == 503 and refused[1]["code"] == "STORE_UNAVAILABLE", refused
    assert refused[1]["retriable"] is True
    assert (await api.get("/readyz"))[0] == 503
    for tid in accepted:  # what was accepted runs on (here: until canceled)
        assert (await api.status(tid))["state"] == "running"
        assert await api.cancel(tid) == 204


@pytest.mark.parametrize("backend", ["normal", "full", "postgresql"])
async def test_admission_waits_for_its_commit_and_a_burst_shares_one(
    start_daemon, backend, request
):
    """OC-STORE-1001, OC-STORE-1007"""
    # SQLite inline on the loop, SQLite on a writer thread (fsync), PostgreSQL (pipelined)
    if backend == "postgresql":
        url = request.getfixturevalue("postgres").database("burst")
        store = {"url": url}
    else:
        store = {"synchronous": backend}
    api = await start_daemon(mock_pool(replicas={"managed": {"slots": 64}}), store=store)
    service = api.daemon.service
    commits = service.metrics.registry.get_sample_value
    before = commits("store_commit_latency_ms_count")
    burst = [  # admitted in one loop iteration; stalled before any token (nothing else writes)
        service.admission.admit(
            Submission(model="mock-model", tenant="t", correlation_id="c", prompt="[[stall:0]]")
        )
        for _ in range(50)
    ]
    await asyncio.gather(*(rec.durable for rec in burst if rec.durable is not None))
    assert commits("store_commit_latency_ms_count") == before + 1
    _, body, _ = await api.submit(model="mock-model", prompt="durable", max_tokens=2)
    # once the client heard 202, it is in the store
    if backend == "postgresql":
        with psycopg.connect(url) as db:
            row = db.execute("SELECT state FROM tasks WHERE id = %s", (body["task_id"],))
            assert row.fetchone()
    else:
        with sqlite3.connect(state_db()) as db:
            assert db.execute("SELECT state FROM tasks WHERE id = ?", (body["task_id"],)).fetchone()


async def test_memory_store_writes_nothing(start_daemon):
    """OC-STORE-1006"""
    api = await start_daemon(mock_pool(), store={"url": "memory:"})
    _, body, _ = await api.submit(model="mock-model", prompt="volatile", max_tokens=2)
    await api.wait_state(body["task_id"], "completed")
    assert not state_db().exists()
    assert api.daemon.service.store.location is None


async def test_the_schema_is_versioned_and_migrated(tmp_path):
    """OC-STORE-1006"""
    store = SqliteStore(tmp_path)
    assert await store.open() == Snapshot()
    await store.close()
    with sqlite3.connect(tmp_path / "orchestratord.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = SqliteStore(tmp_path)  # reopening migrates nothing and loses nothing
    assert await again.open() == Snapshot()
    await again.close()


async def test_the_log_is_checkpointed_off_the_loop(tmp_path):
    """OC-STORE-1008"""
    store = SqliteStore(tmp_path)
    await store.open()
    db = tmp_path / "orchestratord.db"
    empty = db.stat().st_size
    spec = "x" * 5_000  # 2 pages a commit: the log passes SQLite's 1,000 pages long before
    for i in range(CHECKPOINT_EVERY - 1):
        await store.admitted(TaskRow(f"t{i}", "pool", "queued", spec, 0))  # a commit each
    # with SQLite's automatic checkpoint the loop would have copied the log by now
    assert db.stat().st_size == empty
    await store.admitted(TaskRow("last", "pool", "queued", spec, 0))
    assert store.checkpointer is not None
    store.checkpointer.stop()  # ends after the checkpoint it was nudged for
    assert db.stat().st_size > CHECKPOINT_EVERY * len(spec)
    await store.close()
    again = SqliteStore(tmp_path)
    assert [t.row.id for t in (await again.open()).tasks][-1] == "last"
    await again.close()


async def test_the_postgres_schema_is_migrated_once_by_whoever_opens_it_first(postgres, tmp_path):
    """OC-STORE-1007"""
    url = postgres.database("migrate")
    stores = [PostgresStore(url, tmp_path / "files") for _ in range(3)]
    assert await asyncio.gather(*(s.open() for s in stores)) == [Snapshot()] * 3
    for store in stores:
        await store.close()
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM orch_schema").fetchall() == [(len(PG_MIGRATIONS),)]
        db.execute("UPDATE orch_schema SET version = 99")
    with pytest.raises(StoreError, match="schema 99, newer than this orchestratord knows"):
        await PostgresStore(url, tmp_path / "files").open()


async def test_an_unreachable_or_refusing_postgres_exits_2_with_one_line(postgres, tmp_path):
    """OC-STORE-1007"""
    down = f"postgresql://orch:secret@127.0.0.1:{free_port()}/none"
    code, errors = await _serve_fails(tmp_path, {"store": {"url": down}, "pools": [mock_pool()]})
    assert code == 2 and len(errors) == 1, errors
    assert "cannot be reached" in errors[0] and "secret" not in errors[0]
    missing = postgres.url.rsplit("/", 1)[0] + "/no_such_database"
    code, errors = await _serve_fails(tmp_path, {"store": {"url": missing}, "pools": [mock_pool()]})
    assert code == 2 and len(errors) == 1 and "no_such_database" in errors[0], errors
