"""What the SQL task stores share: the statements, group commit, and reading back.

Writes made in one event-loop iteration are committed together, in one transaction, one
iteration after it (group commit: a task admitted meanwhile has sent its engine request by
then), and their futures settle then — sooner when someone waits on them with nothing to
overlap (`hurry`: a reader holds a task's first token): the first hurried group of an
iteration at once, any later one at the iteration's end. A store either commits
inline on the loop (SQLite with `synchronous: normal`: a commit is a write to the OS, tens
of microseconds, less than a thread hop) or hands each group to a writer thread that owns
the connection (an fsync per group, or a network round trip): what arrives meanwhile joins
the next group. If a group's transaction fails, its writes are retried one by one, so one
write that cannot be done (the disk is full) fails alone.

The SQL is portable between SQLite and PostgreSQL (`store.statements`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from abc import abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import structlog

from orchestratord.store.base import (
    BatchItem,
    Durable,
    Snapshot,
    StoredBatch,
    StoredTask,
    StoreError,
    TaskRow,
    TaskStore,
)
from orchestratord.store.statements import Connection, Statements

log = structlog.get_logger("orchestratord")


#: A write: SQL, its parameters, and the future of a caller waiting on it.
Write = tuple[str, tuple[Any, ...], "Durable | None"]


class SqlStore(TaskStore):
    #: The driver's errors (a write that fails with one fails alone; others are bugs).
    errors: tuple[type[Exception], ...]

    def __init__(self, location: str, files_dir: Path, placeholder: str) -> None:
        self.location = location
        self.files_dir = files_dir
        self.sql = Statements.for_placeholder(placeholder)
        self._seq = 0
        self._pending: list[Write] = []
        #: This loop iteration hurried a group; and another hurry came after it, or the
        #: first found other writes pending (then they go at the iteration's end).
        self._hurrying = self._hurry_again = False
        self._inbox: queue.SimpleQueue[list[Write] | None] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Set once no write may be made any more (`abandon`, or an unusable store): why.
        self._stopped: str | None = None
        #: `close` began: what is written after that is never committed.
        self._closed = False

    # -- what a backend provides -------------------------------------------------------

    @abstractmethod
    def _connect(self) -> tuple[Connection, bool]:
        """Open, lock and migrate (in a worker thread); the writer connection, and whether
        groups commit on a writer thread (else inline on the loop). Raise StoreError."""

    @abstractmethod
    def _reader(self) -> AbstractContextManager[Connection]:
        """A connection of its own for reads off the loop (readers never wait for the
        writer)."""

    def _release(self) -> None:
        """After the connection is closed: release whatever `_connect` held."""

    def _committed(self) -> None:
        """After each group that committed whole, on the thread that committed it."""

    def _unusable(self, error: Exception) -> str | None:
        """Why no later write can succeed either, if `error` says so (the connection is gone,
        the daemon was deposed): the group fails whole and the store stops writing."""
        return None

    # -- open ----------------------------------------------------------------------

    async def open(self) -> Snapshot:
        self._loop = asyncio.get_running_loop()
        stored = await asyncio.to_thread(self._open)
        return stored

    def _open(self) -> Snapshot:
        conn, threaded = self._connect()
        try:
            stored = self._load(conn)
            self._seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]
        except self.errors as e:
            conn.close()
            self._release()
            raise StoreError(f"task store {self.location} cannot be used: {e}") from None
        self._conn = conn
        if threaded:
            self._thread = threading.Thread(target=self._write_loop, name="task-store", daemon=True)
            self._thread.start()
        return stored

    def _load(self, conn: Connection) -> Snapshot:
        rows = conn.execute(
            "SELECT id, pool_id, state, spec, admitted_unix_ms, batch_id, batch_line, seq, "
            "streamed, started, ended_unix_ms, result FROM tasks "
            "WHERE batch_id IS NULL OR result IS NULL ORDER BY seq"
        ).fetchall()
        tasks = {
            r[0]: StoredTask(
                TaskRow(*r[:7]), seq=r[7], streamed=bool(r[8]), started=r[9],
                ended_unix_ms=r[10], result=r[11],
            )
            for r in rows
        }  # fmt: skip
        for task_id, tokens in conn.execute(
            "SELECT task_id, tokens FROM task_output WHERE task_id IN "
            "(SELECT id FROM tasks WHERE batch_id IS NULL OR result IS NULL) "
            "ORDER BY task_id, chunk"
        ).fetchall():
            tasks[task_id].output.append(tokens)
        files = dict(conn.execute("SELECT id, doc FROM files").fetchall())
        progress = {
            batch_id: (fed, completed, failed)
            for batch_id, fed, completed, failed in conn.execute(
                "SELECT batch_id, MAX(batch_line) + 1, "
                "SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN result IS NOT NULL AND state != 'completed' THEN 1 ELSE 0 END) "
                "FROM tasks WHERE batch_id IS NOT NULL GROUP BY batch_id"
            ).fetchall()
        }
        batches = {
            batch_id: StoredBatch(doc, *(int(n) for n in progress.get(batch_id, (0, 0, 0))))
            for batch_id, doc in conn.execute(
                "SELECT id, doc FROM batches ORDER BY created_at"
            ).fetchall()
        }
        return Snapshot(list(tasks.values()), files, batches)

    # -- the Batch API -----------------------------------------------------------------

    def put_file(self, file_id: str, created_at: int, doc: str) -> Durable:
        return self._durable_write(self.sql.put_file, (file_id, created_at, doc))

    def delete_file(self, file_id: str) -> None:
        self._write(self.sql.delete_file, (file_id,))

    def put_batch(self, batch_id: str, created_at: int, doc: str) -> Durable:
        return self._durable_write(self.sql.put_batch, (batch_id, created_at, doc))

    async def batch_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        return await asyncio.to_thread(self._read_items, batch_id, after_line, limit)

    def _read_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        with self._reader() as conn:
            rows = conn.execute(self.sql.items, (batch_id, after_line, limit)).fetchall()
            items = []
            for task_id, line, state, spec, result in rows:
                chunks = conn.execute(self.sql.item_output, (task_id,)).fetchall()
                items.append(BatchItem(line, state, spec, result, [c for (c,) in chunks]))
            return items

    def drop_batch_items(self, batch_id: str) -> None:
        self._write(self.sql.drop_batch_items, (batch_id,))

    # -- writes (on the loop) --------------------------------------------------------

    def admitted(self, row: TaskRow) -> Durable:
        self._seq += 1
        params = (row.id, row.pool_id, row.state, row.spec, row.admitted_unix_ms, self._seq)
        return self._durable_write(self.sql.admit, (*params, row.batch_id, row.batch_line))

    def output(self, task_id: str, chunk: int, tokens: str) -> None:
        self._write(self.sql.output, (task_id, chunk, tokens))

    def streamed(self, task_id: str, started: str) -> Durable:
        return self._durable_write(self.sql.started, (started, task_id))

    def ended(self, task_id: str, state: str, ended_unix_ms: int, result: str) -> Durable:
        return self._durable_write(self.sql.ended, (state, ended_unix_ms, result, task_id))

    def forgotten(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self._write(self.sql.forget, (task_id,))

    def hurry(self) -> None:
        # At most two hurried commits per loop iteration (a commit per first token would
        # cost a commit per stream under load): the waiter's own write alone, at once;
        # whatever else is hurried in the iteration, together at its end.
        if not self._pending:
            return
        if self._hurrying:
            self._hurry_again = True
            return
        assert self._loop is not None
        self._hurrying = True
        self._loop.call_soon(self._hurried)
        if len(self._pending) == 1:
            self._hand_over()  # (the hand-over scheduled for it finds nothing to do)
        else:
            self._hurry_again = True

    def _hurried(self) -> None:
        # only what was hurried goes early: an admission written meanwhile keeps its
        # place behind its engine request
        self._hurrying = False
        if self._hurry_again:
            self._hurry_again = False
            self._hand_over()

    def _durable_write(self, sql: str, params: tuple[Any, ...]) -> Durable:
        assert self._loop is not None, "open the store first"
        done = Durable(loop=self._loop)
        self._write(sql, params, done)
        return done

    def _write(self, sql: str, params: tuple[Any, ...], done: Durable | None = None) -> None:
        if self._closed:  # (a batch's writer that outlived the daemon's shutdown)
            # its waiter hears so now: a Durable declines cancellation, so one never settled
            # would hold its waiter, and whoever cancels it, forever
            if done is not None:
                done.set_exception(StoreError(f"the task store {self.location} is closed"))
            return
        if not self._pending:  # the first write of this loop iteration: hand over after it
            assert self._loop is not None
            # ... and after what that iteration scheduled: a task admitted with this write
            # has sent its engine request by then, so the commit overlaps the engine's work
            # instead of delaying its start (and late writes join the group)
            self._loop.call_soon(self._loop.call_soon, self._hand_over)
        self._pending.append((sql, params, done))

    def _hand_over(self) -> None:
        if not self._pending:  # `hurry` took this group already
            return
        writes, self._pending = self._pending, []
        if self._thread is None:  # inline: commit here, at the end of the loop iteration
            started = time.perf_counter()
            failures = self._commit(writes)
            self._settle(writes, failures, time.perf_counter() - started)
        else:
            self._inbox.put(writes)

    async def close(self) -> None:
        self._closed = True
        if self._pending:
            self._hand_over()
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release()

    # -- the writer thread -------------------------------------------------------------

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = self._inbox.get()
            if first is None:
                break
            group = list(first)
            while True:  # everything else waiting joins this commit
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.extend(more)
            started = time.perf_counter()
            failures = self._commit(group)
            elapsed = time.perf_counter() - started
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._settle, group, failures, elapsed)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def abandon(self, why: str) -> None:
        self._stopped = self._stopped or why

    def _commit(self, group: list[Write]) -> dict[int, str]:
        """Commit `group` in one transaction, else write by write in order. Returns why each
        failed write failed, by index."""
        conn = self._conn
        assert conn is not None
        try:
            if self._stopped is None:
                self._transaction(conn, group)
                self._committed()
                return {}
        except self.errors as e:
            self._rollback(conn)
            self._check_usable(e)
        failures: dict[int, str] = {}
        for i, write in enumerate(group):
            if self._stopped is not None:
                failures[i] = self._stopped
                continue
            try:
                self._transaction(conn, [write])
            except self.errors as e:
                self._rollback(conn)
                failures[i] = str(e).strip()
                self._check_usable(e)
        return failures

    def _transaction(self, conn: Connection, group: list[Write]) -> None:
        """Run `group` in one transaction (a backend may pipeline it, or fence it)."""
        conn.execute("BEGIN")
        for sql, params, _ in group:
            conn.execute(sql, params)
        conn.execute("COMMIT")

    def _check_usable(self, error: Exception) -> None:
        why = self._unusable(error)
        if why is None or self._stopped is not None:
            return
        self._stopped = why
        if self.on_unusable is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                self._loop.call_soon_threadsafe(self.on_unusable, why)

    def _rollback(self, conn: Connection) -> None:
        with contextlib.suppress(*self.errors):  # no transaction was open (BEGIN failed)
            conn.execute("ROLLBACK")

    def _settle(self, group: list[Write], failures: dict[int, str], elapsed: float) -> None:
        if self.on_commit is not None:
            self.on_commit(elapsed)
        if failures:
            if self.healthy:
                why = next(iter(failures.values()))
                log.error("task store write failed", store=self.location, error=why)
            self.healthy = False
        elif any(sql is self.sql.admit for sql, _, _ in group):  # new work fits again
            self.healthy = True
        for i, (_, _, done) in enumerate(group):
            if done is None or done.done():
                continue
            if i in failures:
                done.set_exception(StoreError(f"the task store cannot write: {failures[i]}"))
            else:
                done.set_result(None)
