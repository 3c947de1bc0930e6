"""When the daemon journals a task and in what form: the admission commit beside the
engine's start, output chunks as columns (read back in the earlier form too), and the last
output in the task's result."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import orjson
import pytest

from orchestratord.service.admission import Submission
from orchestratord.service.journal import tokens_of
from orchestratord.service.output import Output
from orchestratord.service.streams import END, TOKEN
from orchestratord.store import Durable, StoreError, TaskRow
from orchestratord.store.sqlite import MIGRATIONS, SqliteStore
from tests.helpers import journal, mock_pool

T = TypeVar("T")


async def test_the_admission_commit_does_not_delay_the_engine_request(start_daemon):
    """OC-STORE-1001: a task admitted with free slots starts its engine request before its
    admission is committed (the commit overlaps the engine's work; only the client's answer
    waits for it)."""
    api = await start_daemon(mock_pool())
    service = api.daemon.service
    order: list[str] = []
    for replica in service.pools["mock"].manager.replicas:
        adapter = replica.adapter
        assert adapter is not None
        adapter.stream = _recorded(adapter.stream, order)  # type: ignore[method-assign]
    on_commit = service.store.on_commit
    assert on_commit is not None

    def committed(elapsed: float) -> None:
        order.append("commit")
        on_commit(elapsed)

    service.store.on_commit = committed
    status, _, _ = await api.submit(model="mock-model", prompt="p", max_tokens=1)
    assert status == 202 and order[:2] == ["engine", "commit"]


async def test_a_readers_first_token_is_committed_at_once(start_daemon):
    """OC-STORE-1009: the commit a reader waits on before a task's first token runs in
    that reader's own step — not an iteration later, behind the rest of the engine's
    stream."""
    api = await start_daemon(mock_pool(mock={"stall_after_tokens": 2}))
    store = api.daemon.service.store
    hand_over = store._hand_over
    inline: list[bool] = []  # per group holding a `started` write: committed in a task step?

    def recorded() -> None:
        if any(sql is store.sql.started for sql, _, _ in store._pending):
            inline.append(asyncio.current_task() is not None)
        hand_over()

    store._hand_over = recorded  # type: ignore[method-assign]
    _, body, _ = await api.submit(model="mock-model", prompt="p", max_tokens=5)
    events = await api.events(body["task_id"], until="token")
    assert [e[0] for e in events] == ["started", "token"] and inline == [True]


def _recorded(stream: Any, order: list[str]) -> Any:
    def started(request: Any) -> Any:
        order.append("engine")
        return stream(request)

    return started


async def test_a_task_that_ends_before_its_reader_comes_reaches_it_in_one_batch(start_daemon):
    """OC-STORE-1009: its tokens wait for its end's journal write, and its ending — held
    back for that same write — goes with them (one write to the client), not a loop
    turn after them."""
    api = await start_daemon(mock_pool())
    service = api.daemon.service
    submission = Submission(model="mock-model", tenant="t", correlation_id="c", max_tokens=5)
    rec = service.admission.admit(submission)  # read from before its first step
    gate = partial(service.book.delivering, rec)
    batches = [[e[0] for e in batch] async for batch in rec.stream.read(gate=gate)]
    with_tokens = next(batch for batch in batches if TOKEN in batch)
    assert with_tokens[-6:] == [TOKEN] * 5 + [END] and with_tokens is batches[-1]


def test_output_journaled_in_the_earlier_format_still_reads_back():
    """OC-STORE-1006: output chunks are columns now; a journal written before holds one
    array per token, and both read back as the same tokens, in order."""
    out = Output()
    out.extend([(0, "a", (1,)), (1, "日本", (2, 3)), (2, "", ())])
    earlier = orjson.dumps([[0, "a", [1]]]).decode()
    now = orjson.dumps(out.columns(1)).decode()
    assert tokens_of([earlier, now]) == [(0, "a", (1,)), (1, "日本", (2, 3)), (2, "", ())]


async def test_an_unwatched_task_is_journaled_twice_and_its_output_survives(served, store_backend):
    """OC-STORE-1009, OC-STORE-1004: a non-streamed completion is journaled at admission and
    at its end, its output in the end's one write (no output chunk row); after a SIGKILL its
    status and stream read back whole."""
    await served.start(mock_pool())
    body = {"model": "mock-model", "prompt": "nobody streams this", "max_tokens": 6}
    async with served.http.post(f"{served.url}/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        text = (await r.json())["choices"][0]["text"]
        task_id = r.headers["X-Task-Id"]
    with journal(served) as db:
        chunks = db.execute("SELECT COUNT(*) FROM task_output").fetchone()
        (result,) = db.execute("SELECT result FROM tasks").fetchone()
    assert chunks == (0,) and orjson.loads(result)["output"]["text"] == text != ""
    status = await served.status(task_id)
    await served.kill()
    await served.start(mock_pool())
    assert await served.status(task_id) == status
    events = await served.events(task_id)
    assert [e[0] for e in events] == ["started", *["token"] * 6, "end"]
    assert "".join(orjson.loads(data)["t"] for _, _, data in events[1:-1]) == text


async def test_a_first_schema_store_migrates_keeping_every_row(tmp_path):
    """OC-STORE-1006: a store written at schema 1 opens at the current schema with its
    tasks (in admission order), their output and their batch lines, and its output rows
    still go with their task."""
    with sqlite3.connect(tmp_path / "orchestratord.db") as db:
        db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
        insert = "INSERT INTO tasks (id, seq, pool_id, state, spec, admitted_unix_ms, "
        insert += "batch_id, batch_line) VALUES (?, ?, 'p', 'queued', '{}', 0, ?, ?)"
        db.execute(insert, ("late", 9, None, None))
        db.execute(insert, ("early", 3, None, None))
        db.execute(insert, ("item", 5, "b", 0))
        db.execute("INSERT INTO task_output VALUES ('early', 0, '[]')")
    store = SqliteStore(tmp_path)
    snapshot = await store.open()
    assert [(t.row.id, t.seq, t.output) for t in snapshot.tasks] == [
        ("early", 3, ["[]"]), ("item", 5, []), ("late", 9, []),
    ]  # fmt: skip
    assert snapshot.tasks[1].row.batch_line == 0
    store.forgotten(["early"])
    await store.close()
    with sqlite3.connect(tmp_path / "orchestratord.db") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("SELECT COUNT(*) FROM task_output").fetchone() == (0,)


async def test_the_first_hurried_write_commits_at_once_and_later_ones_share_a_group(tmp_path):
    """OC-STORE-1009: a hurried write commits at once; what is hurried after it in the same
    loop iteration commits together at the iteration's end (a commit per first token would
    cost a commit per stream under load)."""
    store = SqliteStore(tmp_path)
    await store.open()
    groups: list[float] = []
    store.on_commit = groups.append
    await asyncio.gather(*(store.admitted(TaskRow(f"t{i}", "p", "running", "{}", 0))
                           for i in range(3)))  # fmt: skip
    groups.clear()
    first = store.streamed("t0", "{}")
    store.hurry()
    assert first.done() and len(groups) == 1
    later = []
    for task_id in ("t1", "t2"):  # more first tokens in the same iteration (under load)
        later.append(store.streamed(task_id, "{}"))
        store.hurry()
    assert not any(f.done() for f in later)
    assert await _on_next_turn(lambda: all(f.done() for f in later))  # this iteration's end
    assert len(groups) == 2
    await store.close()


async def test_a_hurry_does_not_rush_an_admission_written_after_it(tmp_path):
    """OC-STORE-1001, OC-STORE-1009: after a hurried commit, an admission written in the
    same iteration keeps its place — committed after the loop's next iteration, once its
    engine request is out — not at the hurried iteration's end."""
    store = SqliteStore(tmp_path)
    await store.open()
    await store.admitted(TaskRow("t0", "p", "running", "{}", 0))
    streamed = store.streamed("t0", "{}")
    store.hurry()
    admitted = store.admitted(TaskRow("t1", "p", "queued", "{}", 0))
    assert streamed.done()
    assert not await _on_next_turn(admitted.done)
    await admitted
    await store.close()


async def test_a_writes_waiters_resume_the_turn_after_its_commit_and_each_may_leave(tmp_path):
    """OC-STORE-1009: a reader waiting on its first token's commit resumes in the loop turn
    after that commit (the wait adds no turn of its own), and a waiter that is cancelled —
    its client hung up — does not take the write's outcome from another waiter."""
    store = SqliteStore(tmp_path)
    await store.open()
    await store.admitted(TaskRow("t0", "p", "running", "{}", 0))
    writes: list[Durable] = []
    resumed: list[str] = []

    async def reader(name: str) -> None:
        if not writes:  # (written in the readers' turn: its commit is two turns away)
            writes.append(store.streamed("t0", "{}"))
        await writes[0]
        resumed.append(name)

    leaving, staying = (asyncio.create_task(reader(name)) for name in ("leaving", "staying"))
    await _on_next_turn(lambda: None)  # both wait on the write now
    [write] = writes
    assert not write.done()
    leaving.cancel()
    store.hurry()  # commits at once
    assert write.done() and not write.cancelled()
    assert await _on_next_turn(lambda: list(resumed)) == ["staying"]
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await staying
    await store.close()


async def test_a_write_made_once_the_store_closes_fails_at_once_and_holds_no_waiter(tmp_path):
    """OC-STORE-1009: a write that comes once the store is closing (a batch's writer that
    outlived the daemon's shutdown) fails at once with StoreError: its Durable declines
    cancellation, so one never settled would hold its waiter, and the event loop's
    shutdown that cancels it, forever (found: a test run hung in its loop's teardown)."""
    store = SqliteStore(tmp_path)
    await store.open()
    await store.close()
    late = store.put_file("file-1", 0, "{}")
    assert late.done()
    with pytest.raises(StoreError, match="closed"):
        late.result()
    waiter = asyncio.create_task(_await(store.put_file("file-2", 0, "{}")))
    await _on_next_turn(waiter.cancel)
    with pytest.raises(StoreError):
        await waiter


async def _await(durable: Durable) -> None:
    await durable


async def _on_next_turn(probe: Callable[[], T]) -> T:
    """`probe()` as the loop's next iteration runs it: after every callback scheduled
    before this call (callbacks run first in, first out), before any scheduled later."""
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[T] = loop.create_future()
    loop.call_soon(lambda: seen.set_result(probe()))
    return await seen
