"""The task store's interface: what the daemon journals about accepted tasks, and what it
reads back on start. Rows only — the service maps its records to them (`service.journal`).

Writes are ordered and fire-and-forget, except an admission's, which the caller may await:
the client hears "accepted" only once its task is durable. A backend groups the writes that
arrive together into one transaction (group commit), so durability costs a commit per burst,
not per task. SQL stays portable (SQLite here; PostgreSQL fits the same shape).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field


class StoreError(Exception):
    """The store cannot be opened or written (corrupt, unwritable, full, locked)."""


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One accepted task as journaled at admission."""

    id: str
    pool_id: str
    state: str
    #: JSON: everything needed to rebuild the task and its engine request.
    spec: str
    admitted_unix_ms: int


@dataclass(slots=True)
class StoredTask:
    """One task as read back on start: its admission row, and how far it got."""

    row: TaskRow
    #: Admission order (the store's own sequence).
    seq: int
    #: Some of its tokens reached a client.
    streamed: bool = False
    #: Its `started` event (JSON), journaled with its first token.
    started: str | None = None
    ended_unix_ms: int | None = None
    #: JSON: how it ended (finish reason, counts, error envelope); None while live.
    result: str | None = None
    #: Journaled output chunks, in order (JSON each).
    output: list[str] = field(default_factory=list)


class TaskStore(ABC):
    """Where accepted work outlives the process."""

    #: Accepted work outlives the process (False: `memory:`).
    durable: bool = True
    #: False while writes fail (a full disk).
    healthy: bool = True
    #: Where it lives, for `serve` to print; None for the in-memory store.
    location: str | None = None
    #: Called on the loop with each group commit's duration in seconds (a metrics hook).
    on_commit: Callable[[float], None] | None = None

    @abstractmethod
    async def open(self) -> list[StoredTask]:
        """Open (creating and migrating as needed) and return every journaled task in
        admission order; raise StoreError with one clear line if it cannot be used."""

    @abstractmethod
    def admitted(self, row: TaskRow) -> asyncio.Future[None] | None:
        """Journal a new task; the future resolves once it is durable (None: durability
        is off) or fails with StoreError."""

    @abstractmethod
    def output(
        self, task_id: str, chunk: int, tokens: str, started: str | None = None
    ) -> asyncio.Future[None] | None:
        """Journal output chunk `chunk` (JSON) of a task; with `started` (its `started`
        event, JSON, given with chunk 0), also that its tokens reach a client. The future
        resolves once that is durable (None: durability is off)."""

    @abstractmethod
    def ended(
        self, task_id: str, state: str, ended_unix_ms: int, result: str
    ) -> asyncio.Future[None] | None:
        """A task reached its terminal state; the future resolves once that is durable."""

    @abstractmethod
    def forgotten(self, task_ids: list[str]) -> None:
        """Finished tasks past their retention: delete them."""

    @abstractmethod
    async def close(self) -> None:
        """Write what is pending, then release the store."""
