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
from pathlib import Path
from typing import Any, TextIO

import structlog

from orchestratord.store.base import StoredTask, StoreError, TaskRow, TaskStore

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
        result TEXT
    );
    CREATE TABLE task_output (
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        chunk INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        PRIMARY KEY (task_id, chunk)
    );
    """,
)

_ADMIT = (
    "INSERT INTO tasks (id, pool_id, state, spec, admitted_unix_ms, seq) VALUES (?, ?, ?, ?, ?, ?)"
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

    async def open(self) -> list[StoredTask]:
        self._loop = asyncio.get_running_loop()
        stored = await asyncio.to_thread(self._open)
        if self._synchronous == "full":
            self._thread = threading.Thread(target=self._write_loop, name="task-store", daemon=True)
            self._thread.start()
        return stored

    def _open(self) -> list[StoredTask]:
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
        self._seq = max((s.seq for s in stored), default=0)
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

    def _load(self, conn: sqlite3.Connection) -> list[StoredTask]:
        rows = conn.execute(
            "SELECT id, pool_id, state, spec, admitted_unix_ms, seq, streamed, started, "
            "ended_unix_ms, result FROM tasks ORDER BY seq"
        ).fetchall()
        tasks = {
            r[0]: StoredTask(
                TaskRow(*r[:5]), seq=r[5], streamed=bool(r[6]), started=r[7],
                ended_unix_ms=r[8], result=r[9],
            )
            for r in rows
        }  # fmt: skip
        for task_id, tokens in conn.execute(
            "SELECT task_id, tokens FROM task_output ORDER BY task_id, chunk"
        ):
            tasks[task_id].output.append(tokens)
        return list(tasks.values())

    # -- writes (on the loop) --------------------------------------------------------

    def admitted(self, row: TaskRow) -> asyncio.Future[None]:
        assert self._loop is not None, "open the store first"
        self._seq += 1
        done: asyncio.Future[None] = self._loop.create_future()
        self._write(
            _ADMIT,
            (row.id, row.pool_id, row.state, row.spec, row.admitted_unix_ms, self._seq),
            done,
        )
        return done

    def output(
        self, task_id: str, chunk: int, tokens: str, started: str | None = None
    ) -> asyncio.Future[None]:
        assert self._loop is not None, "open the store first"
        done: asyncio.Future[None] = self._loop.create_future()
        self._write(
            "INSERT OR REPLACE INTO task_output (task_id, chunk, tokens) VALUES (?, ?, ?)",
            (task_id, chunk, tokens),
            None if started is not None else done,
        )
        if started is not None:
            self._write(
                "UPDATE tasks SET streamed = 1, started = ? WHERE id = ?", (started, task_id), done
            )
        return done

    def ended(
        self, task_id: str, state: str, ended_unix_ms: int, result: str
    ) -> asyncio.Future[None] | None:
        assert self._loop is not None, "open the store first"
        done: asyncio.Future[None] = self._loop.create_future()
        self._write(
            "UPDATE tasks SET state = ?, ended_unix_ms = ?, result = ? WHERE id = ?",
            (state, ended_unix_ms, result, task_id),
            done,
        )
        return done

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
