"""The task store on PostgreSQL (`store: {url: postgresql://…}`): the same tables, the
same statements and the same group commit as SQLite (`store.sql`), over the network.

psycopg 3 (not asyncpg): its pipeline mode sends a whole group's statements in one round
trip, and its blocking API fits the writer thread the stores share — the event loop never
waits for the database. Several daemons may share one database; whoever opens it first
migrates it (under an advisory lock, so two starting at once do not both try).
Batch API file contents stay in the daemon's state directory (`files_dir`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import structlog

from orchestratord.store.base import StoreError
from orchestratord.store.sql import Connection, SqlStore, Write

log = structlog.get_logger("orchestratord")

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
)

#: pg_advisory_xact_lock key for migrations ('orchmigr' as a 64-bit integer).
_MIGRATION_LOCK = 0x6F7263686D696772


def redacted(url: str) -> str:
    """The URL without its password (for logs and `serve`'s banner)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class PostgresStore(SqlStore):
    errors = (psycopg.Error,)

    def __init__(self, url: str, files_dir: Path, *, connect_timeout_s: int = 10) -> None:
        super().__init__(redacted(url), files_dir, "%s")
        self.url = url
        self._timeout = connect_timeout_s

    def _session(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=self._timeout)
        except psycopg.Error as e:
            raise StoreError(f"task store {self.location} cannot be reached: {e}") from None

    def _connect(self) -> tuple[Connection, bool]:
        conn = self._session()
        try:
            self._migrate(conn)
        except psycopg.Error as e:
            conn.close()
            raise StoreError(f"task store {self.location} cannot be used: {e}") from None
        return conn, True  # a writer thread: the loop never waits on the network

    def _migrate(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS orch_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM orch_schema").fetchone()
            version = int(str(row[0])) if row else 0
            if row is None:
                conn.execute("INSERT INTO orch_schema (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"task store {self.location} is at schema {version}, newer than this "
                    f"orchestratord knows ({len(MIGRATIONS)})"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(script)
                conn.execute("UPDATE orch_schema SET version = %s", (number,))
                log.info("task store migrated", store=self.location, schema=number)

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        conn = self._session()
        try:
            yield conn
        finally:
            conn.close()

    def _run_group(self, conn: Connection, group: list[Write]) -> None:
        assert isinstance(conn, psycopg.Connection)
        with conn.pipeline():  # one round trip for the whole group
            for sql, params, _ in group:
                conn.execute(sql, params)
