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
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """The store cannot be opened or written (corrupt, unwritable, full, locked)."""


class Durable(asyncio.Future[None]):
    """A write's outcome: resolves once the write is durable, or fails with StoreError.

    Only the store settles it, and it settles every one it hands out (a write made once the
    store is closing fails at once). Cancelling a task that awaits it does not cancel it
    (`cancel` declines; the waiting task is cancelled the moment the write settles), so one
    waiter that goes away — a client that hung up — never takes the outcome from the
    others, and a waiter awaits it directly: resumed the loop turn after the commit, where
    `asyncio.shield` would add a turn (its own future is settled by a callback of this one).
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One accepted task as journaled at admission."""

    id: str
    pool_id: str
    state: str
    #: JSON: everything needed to rebuild the task and its engine request.
    spec: str
    admitted_unix_ms: int
    #: A Batch API item: its batch and its line in the batch's input file.
    batch_id: str | None = None
    batch_line: int | None = None


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


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch as read back on start: its document, and how far its items got."""

    doc: str
    #: Lines fed so far (one past the highest line that became a task).
    fed: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(slots=True)
class Snapshot:
    """Everything the store holds, as read on start. Finished batch items are left out
    (their batch's output is read from the store when it is written)."""

    tasks: list[StoredTask] = field(default_factory=list)
    #: File documents (JSON), by id.
    files: dict[str, str] = field(default_factory=dict)
    batches: dict[str, StoredBatch] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchItem:
    """A finished batch item, for its batch's output."""

    line: int
    state: str
    spec: str
    result: str
    output: list[str]


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
    #: Called on the loop, once, when no write can succeed any more (the database went
    #: away, or this daemon was deposed): why. Leadership listens.
    on_unusable: Callable[[str], None] | None = None

    #: Where file contents live (Batch API input and output); None: no Batch API.
    files_dir: Path | None = None

    @abstractmethod
    async def open(self) -> Snapshot:
        """Open (creating and migrating as needed) and return what it holds, tasks in
        admission order; raise StoreError with one clear line if it cannot be used."""

    @abstractmethod
    def admitted(self, row: TaskRow) -> Durable | None:
        """Journal a new task; the future resolves once it is durable (None: durability
        is off) or fails with StoreError."""

    @abstractmethod
    def output(self, task_id: str, chunk: int, tokens: str) -> None:
        """Journal output chunk `chunk` (JSON) of a task (a strict task's checkpoint)."""

    @abstractmethod
    def streamed(self, task_id: str, started: str) -> Durable | None:
        """A task's tokens are about to reach a client (`started`: its `started` event,
        JSON). The future resolves once that is durable (None: durability is off)."""

    @abstractmethod
    def ended(self, task_id: str, state: str, ended_unix_ms: int, result: str) -> Durable | None:
        """A task reached its terminal state; the future resolves once that is durable."""

    @abstractmethod
    def forgotten(self, task_ids: list[str]) -> None:
        """Finished tasks past their retention: delete them."""

    @abstractmethod
    def hurry(self) -> None:
        """Someone waits on the writes pending now with nothing to overlap (a reader holds
        a task's first token): hand them over at once instead of after the loop's next
        iteration (what that iteration runs — the rest of an engine's stream — would delay
        them)."""

    # -- the Batch API ---------------------------------------------------------------

    @abstractmethod
    def put_file(self, file_id: str, created_at: int, doc: str) -> Durable | None:
        """Record (or replace) a file's document; its content is in `files_dir`."""

    @abstractmethod
    def delete_file(self, file_id: str) -> None: ...

    async def keep_content(self, file_id: str, path: Path) -> None:
        """A store daemons share keeps a copy of a file's content (written at `path` in
        `files_dir`), so whichever daemon leads next can read it; raise StoreError if it
        cannot. A store of one daemon has its `files_dir` as the only copy."""
        return None

    async def fetch_content(self, file_id: str, path: Path) -> bool:
        """Write a file's content kept by `keep_content` to `path`; False: none is kept."""
        return False

    @abstractmethod
    def put_batch(self, batch_id: str, created_at: int, doc: str) -> Durable | None:
        """Record (or replace) a batch's document."""

    @abstractmethod
    async def batch_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        """Finished items of a batch with line > `after_line`, in line order."""

    @abstractmethod
    def drop_batch_items(self, batch_id: str) -> None:
        """Delete a batch's item tasks (its output files hold them now)."""

    @abstractmethod
    def abandon(self, why: str) -> None:
        """Make no write any more, pending or future: each fails with `why` (a deposed
        leader lets go of its tasks without journaling their ends)."""

    @abstractmethod
    async def close(self) -> None:
        """Write what is pending, then release the store."""
