"""The task store: accepted work journaled so it survives the daemon (`store.url`)."""

from __future__ import annotations

from orchestratord.config import Config
from orchestratord.store.base import (
    BatchItem,
    Snapshot,
    StoredBatch,
    StoredTask,
    StoreError,
    TaskRow,
    TaskStore,
)
from orchestratord.store.memory import MemoryStore
from orchestratord.store.postgres import PostgresStore
from orchestratord.store.sqlite import SqliteStore

__all__ = [
    "BatchItem",
    "Snapshot",
    "StoreError",
    "StoredBatch",
    "StoredTask",
    "TaskRow",
    "TaskStore",
    "open_store",
]


def open_store(config: Config) -> TaskStore:
    """The store `config` names (not yet opened)."""
    store = config.store
    if store.url == "memory:":
        return MemoryStore()
    if store.url.startswith("postgres"):
        return PostgresStore(store.url, config.server.resolved_state_dir() / "files")
    return SqliteStore(
        config.server.resolved_state_dir(), max_bytes=store.max_bytes,
        synchronous=store.synchronous,
    )  # fmt: skip
