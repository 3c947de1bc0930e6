"""The SQL both task stores speak, and the DB-API surface they use.

Statements are written with `?`; a store whose driver speaks `%s` (psycopg) converts them
once (`Statements.for_placeholder`). Kept portable: the same text runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Connection(Protocol):
    """The DB-API surface the stores use (sqlite3 and psycopg both have it)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Statements:
    """Every statement, in the placeholder style of one driver."""

    admit: str
    output: str
    started: str
    ended: str
    forget: str
    put_file: str
    delete_file: str
    put_batch: str
    drop_batch_items: str
    items: str
    item_output: str

    @classmethod
    def for_placeholder(cls, mark: str) -> Statements:
        return cls(**{name: sql.replace("?", mark) for name, sql in _STATEMENTS.items()})


_STATEMENTS = {
    "admit": "INSERT INTO tasks (id, pool_id, state, spec, admitted_unix_ms, seq, batch_id, "
    "batch_line) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "output": "INSERT INTO task_output (task_id, chunk, tokens) VALUES (?, ?, ?) "
    "ON CONFLICT (task_id, chunk) DO UPDATE SET tokens = excluded.tokens",
    "started": "UPDATE tasks SET streamed = 1, started = ? WHERE id = ?",
    "ended": "UPDATE tasks SET state = ?, ended_unix_ms = ?, result = ? WHERE id = ?",
    "forget": "DELETE FROM tasks WHERE id = ?",
    "put_file": "INSERT INTO files (id, created_at, doc) VALUES (?, ?, ?) ON CONFLICT (id) "
    "DO UPDATE SET created_at = excluded.created_at, doc = excluded.doc",
    "delete_file": "DELETE FROM files WHERE id = ?",
    "put_batch": "INSERT INTO batches (id, created_at, doc) VALUES (?, ?, ?) ON CONFLICT (id) "
    "DO UPDATE SET created_at = excluded.created_at, doc = excluded.doc",
    "drop_batch_items": "DELETE FROM tasks WHERE batch_id = ?",
    "items": "SELECT id, batch_line, state, spec, result FROM tasks WHERE batch_id = ? "
    "AND batch_line > ? AND result IS NOT NULL ORDER BY batch_line LIMIT ?",
    "item_output": "SELECT tokens FROM task_output WHERE task_id = ? ORDER BY chunk",
}
