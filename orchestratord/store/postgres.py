"""The task store on PostgreSQL (`store: {url: postgresql://…}`): the same tables, the
same statements and the same group commit as SQLite (`store.sql`), over the network.

psycopg 3 (not asyncpg): its pipeline mode sends a whole group's statements in one round
trip, and its blocking API fits the writer thread the stores share — the event loop never
waits for the database. Several daemons may share one database; whoever opens it first
migrates it (under an advisory lock, so two starting at once do not both try).
Batch API file contents stay in the daemon's state directory (`files_dir`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

import psycopg
import structlog

from orchestratord.store.base import StoreError
from orchestratord.store.sql import SqlStore, Write
from orchestratord.store.statements import Connection

log = structlog.get_logger("orchestratord")

PgConnection: TypeAlias = "psycopg.Connection[tuple[object, ...]]"

#: Schema migrations (the same tables as SQLite's, with PostgreSQL's 64-bit integers).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL UNIQUE,
        pool_id TEXT NOT NULL,
        state TEXT NOT NULL,
        spec TEXT NOT NULL,
        admitted_unix_ms BIGINT NOT NULL,
        streamed INTEGER NOT NULL DEFAULT 0,
        started TEXT,
        ended_unix_ms BIGINT,
        result TEXT,
        batch_id TEXT,
        batch_line INTEGER
    );
    CREATE UNIQUE INDEX tasks_batch_line ON tasks (batch_id, batch_line);
    CREATE TABLE files (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE batches (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, doc TEXT NOT NULL);
    CREATE TABLE task_output (
        task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        chunk INTEGER NOT NULL,
        tokens TEXT NOT NULL,
        PRIMARY KEY (task_id, chunk)
    );
    """,
    # Leadership (`store.leadership`): one row, the lease, on the database's clock. Every
    # group commit of a leader starts with `orch_fence(its epoch)`: a stale epoch aborts the
    # transaction, and the shared row lock makes a takeover wait for a commit in flight.
    """
    CREATE TABLE orch_leader (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        holder TEXT NOT NULL,
        url TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    INSERT INTO orch_leader VALUES (1, '', '', 0, '-infinity');
    CREATE FUNCTION orch_fence(e BIGINT) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM 1 FROM orch_leader WHERE id = 1 AND epoch = e FOR SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'deposed: leadership epoch % is no longer current', e
                USING ERRCODE = 'OR001';
        END IF;
    END $$;
    """,
    # Batch API file contents, so any daemon that comes to lead can read them.
    """
    CREATE TABLE file_content (
        file_id TEXT NOT NULL,
        part INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (file_id, part)
    );
    """,
)

#: File contents are kept in parts of this many bytes (one row each).
PART_BYTES = 1 << 20

#: SQLSTATE of a fenced write (`orch_fence`).
FENCED = "OR001"

#: pg_advisory_xact_lock key for migrations ('orchmigr' as a 64-bit integer).
_MIGRATION_LOCK = 0x6F7263686D696772


def redacted(url: str) -> str:
    """The URL without its password (for logs and `serve`'s banner)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def connect(url: str, timeout_s: int = 10) -> PgConnection:
    """An autocommit session on `url`; StoreError (one line, no password) if it fails."""
    try:
        # keepalives: a database cut off without a word (a partition) is noticed in seconds
        return psycopg.connect(
            url, autocommit=True, connect_timeout=timeout_s, keepalives=1, keepalives_idle=5,
            keepalives_interval=2, keepalives_count=3, tcp_user_timeout=15_000,
        )  # fmt: skip
    except psycopg.Error as e:
        raise StoreError(f"task store {redacted(url)} cannot be reached: {e}") from None


def migrate(conn: PgConnection, location: str) -> None:
    """Bring the schema up to date, under an advisory lock (daemons starting together
    migrate once); a newer schema than this build knows is refused."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS orch_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM orch_schema").fetchone()
        version = int(str(row[0])) if row else 0
        if row is None:
            conn.execute("INSERT INTO orch_schema (version) VALUES (0)")
        if version > len(MIGRATIONS):
            raise StoreError(
                f"task store {location} is at schema {version}, newer than this "
                f"orchestratord knows ({len(MIGRATIONS)})"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(script)
            conn.execute("UPDATE orch_schema SET version = %s", (number,))
            log.info("task store migrated", store=location, schema=number)


class PostgresStore(SqlStore):
    """`epoch`: the leadership term this store writes for; each group commit is fenced by
    it (None: unfenced, for tools and tests that read and write outside any term)."""

    errors = (psycopg.Error,)

    def __init__(
        self, url: str, files_dir: Path, *, epoch: int | None = None, connect_timeout_s: int = 10
    ) -> None:
        super().__init__(redacted(url), files_dir, "%s")
        self.url = url
        self.epoch = epoch
        self._timeout = connect_timeout_s

    def _connect(self) -> tuple[Connection, bool]:
        conn = connect(self.url, self._timeout)
        try:
            migrate(conn, redacted(self.url))
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"task store {self.location} cannot be used: {e}") from None
        return conn, True  # a writer thread: the loop never waits on the network

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        conn = connect(self.url, self._timeout)
        try:
            yield conn
        finally:
            conn.close()

    def _transaction(self, conn: Connection, group: list[Write]) -> None:
        assert isinstance(conn, psycopg.Connection)
        # one round trip for the whole transaction: BEGIN, the fence, the group, COMMIT
        with conn.pipeline():
            conn.execute("BEGIN")
            if self.epoch is not None:
                conn.execute("SELECT orch_fence(%s)", (self.epoch,))
            for sql, params, _ in group:
                conn.execute(sql, params)
            conn.execute("COMMIT")

    def delete_file(self, file_id: str) -> None:
        super().delete_file(file_id)
        self._write("DELETE FROM file_content WHERE file_id = %s", (file_id,))

    async def keep_content(self, file_id: str, path: Path) -> None:
        await asyncio.to_thread(self._keep_content, file_id, path)

    def _keep_content(self, file_id: str, path: Path) -> None:
        try:
            with connect(self.url, self._timeout) as conn, conn.transaction():
                if self.epoch is not None:
                    conn.execute("SELECT orch_fence(%s)", (self.epoch,))
                conn.execute("DELETE FROM file_content WHERE file_id = %s", (file_id,))
                with path.open("rb") as source:
                    for part, data in enumerate(iter(lambda: source.read(PART_BYTES), b"")):
                        conn.execute(
                            "INSERT INTO file_content (file_id, part, data) VALUES (%s, %s, %s)",
                            (file_id, part, data),
                        )
        except psycopg.Error as e:
            raise StoreError(f"the task store cannot keep file {file_id}: {e}") from None

    async def fetch_content(self, file_id: str, path: Path) -> bool:
        return await asyncio.to_thread(self._fetch_content, file_id, path)

    def _fetch_content(self, file_id: str, path: Path) -> bool:
        partial = path.with_name(f".{path.name}.fetch")
        path.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.url, self._timeout) as conn, partial.open("wb") as out:
            cursor = conn.execute(
                "SELECT data FROM file_content WHERE file_id = %s ORDER BY part", (file_id,)
            )
            found = False
            for (data,) in cursor:
                assert isinstance(data, bytes)
                out.write(data)
                found = True
        if found:
            partial.replace(path)
        else:
            partial.unlink()
        return found

    def _unusable(self, error: Exception) -> str | None:
        if getattr(error, "sqlstate", None) == FENCED:
            return f"deposed: leadership epoch {self.epoch} is no longer current"
        conn = self._conn
        if isinstance(conn, psycopg.Connection) and (conn.closed or conn.broken):
            return f"the database connection was lost: {str(error).strip()}"
        return None
