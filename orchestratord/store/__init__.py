"""The task store: accepted work journaled so it survives the daemon (`store.url`)."""

from __future__ import annotations

from orchestratord.config import Config
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
from orchestratord.store.memory import MemoryStore
from orchestratord.store.postgres import PostgresStore
from orchestratord.store.sqlite import SqliteStore

__all__ = [
    "BatchItem",
    "Durable",
    "Snapshot",
    "StoreError",
    "StoredBatch",
    "StoredTask",
    "TaskRow",
    "TaskStore",
    "open_store",
    "shared",
]


def shared(config: Config) -> bool:
    """Whether daemons may share the store `config` names (they elect a leader)."""
    return config.store.url.startswith("postgres")


def open_store(config: Config, epoch: int | None = None) -> TaskStore:
    """The store `config` names (not yet opened); `epoch`: the leadership term its writes
    are fenced by (a shared store)."""
    store = config.store
    if store.url == "memory:":
        return MemoryStore()
    if shared(config):
        files = config.server.resolved_state_dir() / "files"
        return PostgresStore(store.url, files, epoch=epoch)
    return SqliteStore(
        config.server.resolved_state_dir(), max_bytes=store.max_bytes,
        synchronous=store.synchronous,
    )  # fmt: skip
