"""The embedded task store: one SQLite file (WAL) in the daemon's state directory.

Writes made in one event-loop iteration are committed together, in one transaction, at the
end of that iteration (group commit), and the admissions' futures settle then. With
`synchronous: normal` (the default) a commit is a write to the OS, tens of microseconds,
done on the loop itself: it survives the daemon being killed, and a thread hop would cost
more than the commit. With `synchronous: full` every group also waits for an fsync, so a
writer thread owns the connection and the loop never blocks on the disk; what arrives
while it syncs joins the next group.

A lock file keeps a second daemon off the same state directory.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import queue
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any, TextIO

import structlog

from orchestratord.store.base import (
    BatchItem,
    Snapshot,
    StoredBatch,
    StoredTask,
    StoreError,
    TaskRow,
    TaskStore,
)

log = structlog.get_logger("orchestratord")

#: Schema migrations; the store is at version len(MIGRATIONS) once opened.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        pool_id TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        admitted_unix_ms INTEGER NOT NULL,
        streamed INTEGER NOT NULL DEFAULT 0,
        started TEXT,
        ended_unix_ms INTEGER,
        result TEXT,
        batch_id TEXT,
        batch_line INTEGER
    );
    CREATE UNIQUE INDEX tasks_batch_line ON tasks (batch_id, batch_line);
    CREATE TABLE files (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE batches (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE task_output (
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        chunk INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        PRIMARY KEY (task_id, chunk)
    );
    """,
)

_ADMIT = (
    "INSERT INTO tasks (id, pool_id, state, spec, admitted_unix_ms, seq, batch_id, batch_line) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

#: A write: SQL, its parameters, and the future of an admission waiting on it.
_Write = tuple[str, tuple[Any, ...], "asyncio.Future[None] | None"]


class SqliteStore(TaskStore):
    def __init__(
        self, state_dir: Path, *, max_bytes: int | None = None, synchronous: str = "normal"
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "orchestratord.db"
        self.location = str(self.path)
        self.files_dir = state_dir / "files"
        self._max_bytes = max_bytes
        self._synchronous = synchronous
        self._seq = 0
        self._pending: list[_Write] = []
        self._inbox: queue.SimpleQueue[list[_Write] | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._lock: TextIO | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- open ----------------------------------------------------------------------

    async def open(self) -> Snapshot:
        self._loop = asyncio.get_running_loop()
        stored = await asyncio.to_thread(self._open)
        if self._synchronous == "full":
            self._thread = threading.Thread(target=self._write_loop, name="task-store", daemon=True)
            self._thread.start()
        return stored

    def _open(self) -> Snapshot:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - held open
        except OSError as e:
            raise StoreError(f"state dir {self.state_dir} is not usable: {e.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"state dir {self.state_dir} is in use by another orchestratord"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            if self._max_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(self._max_bytes // page, 1)}")
            self._migrate(conn)
            stored = self._load(conn)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"task store {self.path} cannot be used: {e}") from None
        self._conn = conn
        self._seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM tasks").fetchone()[0]
        return stored

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"task store {self.path} is at schema {version}, newer than this "
                f"orchestratord knows ({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
            log.info("task store migrated", path=str(self.path), schema=number)

    def _load(self, conn: sqlite3.Connection) -> Snapshot:
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
        ):
            tasks[task_id].output.append(tokens)
        files = dict(conn.execute("SELECT id, doc FROM files").fetchall())
        progress = {
            batch_id: (fed, completed, failed)
            for batch_id, fed, completed, failed in conn.execute(
                "SELECT batch_id, MAX(batch_line) + 1, "
                "SUM(CASE WHEN state = 'completed' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN result IS NOT NULL AND state != 'completed' THEN 1 ELSE 0 END) "
                "FROM tasks WHERE batch_id IS NOT NULL GROUP BY batch_id"
            )
        }
        batches = {
            batch_id: StoredBatch(doc, *progress.get(batch_id, (0, 0, 0)))
            for batch_id, doc in conn.execute("SELECT id, doc FROM batches ORDER BY created_at")
        }
        return Snapshot(list(tasks.values()), files, batches)

    # -- the Batch API -----------------------------------------------------------------

    def put_file(self, file_id: str, created_at: int, doc: str) -> asyncio.Future[None]:
        return self._durable_write(
            "INSERT OR REPLACE INTO files (id, created_at, doc) VALUES (?, ?, ?)",
            (file_id, created_at, doc),
        )

    def delete_file(self, file_id: str) -> None:
        self._write("DELETE FROM files WHERE id = ?", (file_id,))

    def put_batch(self, batch_id: str, created_at: int, doc: str) -> asyncio.Future[None]:
        return self._durable_write(
            "INSERT OR REPLACE INTO batches (id, created_at, doc) VALUES (?, ?, ?)",
            (batch_id, created_at, doc),
        )

    async def batch_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        return await asyncio.to_thread(self._read_items, batch_id, after_line, limit)

    def _read_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        # a connection of its own: WAL readers never wait for the writer
        with closing(sqlite3.connect(self.path)) as conn:
            rows = conn.execute(
                "SELECT id, batch_line, state, spec, result FROM tasks WHERE batch_id = ? "
                "AND batch_line > ? AND result IS NOT NULL ORDER BY batch_line LIMIT ?",
                (batch_id, after_line, limit),
            ).fetchall()
            items = []
            for task_id, line, state, spec, result in rows:
                chunks = conn.execute(
                    "SELECT tokens FROM task_output WHERE task_id = ? ORDER BY chunk", (task_id,)
                ).fetchall()
                items.append(BatchItem(line, state, spec, result, [c for (c,) in chunks]))
            return items

    def drop_batch_items(self, batch_id: str) -> None:
        self._write("DELETE FROM tasks WHERE batch_id = ?", (batch_id,))

    def _durable_write(self, sql: str, params: tuple[Any, ...]) -> asyncio.Future[None]:
        assert self._loop is not None, "open the store first"
        done: asyncio.Future[None] = self._loop.create_future()
        self._write(sql, params, done)
        return done

    # -- writes (on the loop) --------------------------------------------------------

    def admitted(self, row: TaskRow) -> asyncio.Future[None]:
        self._seq += 1
        params = (row.id, row.pool_id, row.state, row.spec, row.admitted_unix_ms, self._seq)
        return self._durable_write(_ADMIT, (*params, row.batch_id, row.batch_line))

    def output(
        self, task_id: str, chunk: int, tokens: str, started: str | None = None
    ) -> asyncio.Future[None]:
        sql = "INSERT OR REPLACE INTO task_output (task_id, chunk, tokens) VALUES (?, ?, ?)"
        if started is None:
            return self._durable_write(sql, (task_id, chunk, tokens))
        self._write(sql, (task_id, chunk, tokens))
        return self._durable_write(
            "UPDATE tasks SET streamed = 1, started = ? WHERE id = ?", (started, task_id)
        )

    def ended(
        self, task_id: str, state: str, ended_unix_ms: int, result: str
    ) -> asyncio.Future[None]:
        return self._durable_write(
            "UPDATE tasks SET state = ?, ended_unix_ms = ?, result = ? WHERE id = ?",
            (state, ended_unix_ms, result, task_id),
        )

    def forgotten(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self._write("DELETE FROM tasks WHERE id = ?", (task_id,))

    def _write(
        self, sql: str, params: tuple[Any, ...], done: asyncio.Future[None] | None = None
    ) -> None:
        if not self._pending:  # the first write of this loop iteration: hand over after it
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)
        self._pending.append((sql, params, done))

    def _hand_over(self) -> None:
        writes, self._pending = self._pending, []
        if self._thread is None:  # inline: commit here, at the end of the loop iteration
            started = time.perf_counter()
            failures = self._commit(writes)
            self._settle(writes, failures, time.perf_counter() - started)
        else:
            self._inbox.put(writes)

    async def close(self) -> None:
        if self._pending:
            self._hand_over()
        if self._thread is not None:
            self._inbox.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

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

    def _commit(self, group: list[_Write]) -> dict[int, str]:
        """Commit `group` in one transaction; if that fails, write by write in order, so
        one write that cannot be done (the disk is full) fails alone. Returns why each
        failed write failed, by index."""
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN")
            for sql, params, _ in group:
                conn.execute(sql, params)
            conn.execute("COMMIT")
            return {}
        except sqlite3.Error:
            conn.execute("ROLLBACK") if conn.in_transaction else None
        failures: dict[int, str] = {}
        for i, (sql, params, _) in enumerate(group):
            try:
                conn.execute(sql, params)  # autocommit: its own transaction
            except sqlite3.Error as e:
                failures[i] = str(e)
        return failures

    def _settle(self, group: list[_Write], failures: dict[int, str], elapsed: float) -> None:
        if self.on_commit is not None:
            self.on_commit(elapsed)
        if failures:
            if self.healthy:
                why = next(iter(failures.values()))
                log.error("task store write failed", path=str(self.path), error=why)
            self.healthy = False
        elif any(sql is _ADMIT for sql, _, _ in group):  # new work fits again
            self.healthy = True
        for i, (_, _, done) in enumerate(group):
            if done is None or done.done():
                continue
            if i in failures:
                done.set_exception(StoreError(f"the task store cannot write: {failures[i]}"))
            else:
                done.set_result(None)
