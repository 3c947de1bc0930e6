"""The embedded task store: one SQLite file (WAL) in the daemon's state directory.

Group commit (`store.sql`): with `synchronous: normal` (the default) a group commits inline
at the end of its loop iteration — a write to the OS, tens of microseconds, which survives
the daemon being killed; with `synchronous: full` every group also waits for an fsync, on a
writer thread that owns the connection, so the loop never blocks on the disk. The log is
copied back into the database file by a thread of its own (`WalCheckpointer`).

A lock file keeps a second daemon off the same state directory.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TextIO

import structlog

from orchestratord.store.base import StoreError
from orchestratord.store.sql import SqlStore
from orchestratord.store.statements import Connection

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
    # Cheaper writes: the admission order is the table's own key (a task row was written
    # to three indexes, now to one), and only batch items are indexed by batch line.
    """
    CREATE TABLE tasks_by_seq (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
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
    INSERT INTO tasks_by_seq SELECT seq, id, pool_id, state, spec, admitted_unix_ms,
        streamed, started, ended_unix_ms, result, batch_id, batch_line FROM tasks;
    DROP TABLE tasks;
    ALTER TABLE tasks_by_seq RENAME TO tasks;
    CREATE UNIQUE INDEX tasks_batch_line ON tasks (batch_id, batch_line)
        WHERE batch_id IS NOT NULL;
    """,
)


#: Commits between two checkpoints: a few thousand pages of log (tens of MiB) at the sizes
#: of a task's rows. A page that many commits rewrite (the newest rows') is copied once per
#: checkpoint, so a longer period copies less (SQLite's own default, 1,000 pages, is about
#: 150 of our commits).
CHECKPOINT_EVERY = 1000


class WalCheckpointer:
    """Copies the write-ahead log back into the database file, on a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the
    connection that commits — the event loop here — and with `synchronous: normal` it is
    the one step that fsyncs (the log, then the database): milliseconds, where a commit
    takes tens of microseconds, so one commit in a hundred stalled the loop for longer than
    the other ninety-nine together. The store turns it off and nudges this thread every
    `CHECKPOINT_EVERY` commits instead; its checkpoint is PASSIVE (it neither waits for nor
    blocks the writer) on a connection of its own, and the sqlite3 module lets go of the GIL
    while SQLite works. The last connection to close checkpoints what is left.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._due = threading.Event()
        self._stopping = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        self._due.set()

    def stop(self) -> None:
        """Checkpoint once more, then end the thread."""
        self._stopping = True
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            while True:
                self._due.wait()
                self._due.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._failing = False
                except sqlite3.Error as e:  # the disk is full: the log grows until it is not
                    if not self._failing:
                        log.warning("task store checkpoint failed", path=str(self.path), error=e)
                    self._failing = True
                if self._stopping:
                    return


class SqliteStore(SqlStore):
    errors = (sqlite3.Error,)

    def __init__(
        self, state_dir: Path, *, max_bytes: int | None = None, synchronous: str = "normal"
    ) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "orchestratord.db"
        super().__init__(str(self.path), state_dir / "files", "?")
        self._max_bytes = max_bytes
        self._synchronous = synchronous
        self._lock: TextIO | None = None
        #: Copies the log into the database file (while open).
        self.checkpointer: WalCheckpointer | None = None
        self._commits = 0

    def _connect(self) -> tuple[Connection, bool]:
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
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if self._max_bytes is not None:
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(self._max_bytes // page, 1)}")
            self._migrate(conn)
        except sqlite3.DatabaseError as e:
            raise StoreError(f"task store {self.path} cannot be used: {e}") from None
        self.checkpointer = WalCheckpointer(self.path)
        return conn, self._synchronous == "full"

    def _committed(self) -> None:
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0 and self.checkpointer is not None:
            self.checkpointer.nudge()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"task store {self.path} is at schema {version}, newer than this "
                f"orchestratord knows ({len(MIGRATIONS)})"
            )
        # a migration may rebuild a table: dropping the old one must not cascade into the
        # rows that refer to it (foreign keys cannot be switched inside a transaction)
        conn.execute("PRAGMA foreign_keys=OFF")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
            log.info("task store migrated", path=str(self.path), schema=number)
        if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise StoreError(f"task store {self.path} has output rows of no task")
        conn.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        with closing(sqlite3.connect(self.path)) as conn:
            yield conn

    def _release(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None
