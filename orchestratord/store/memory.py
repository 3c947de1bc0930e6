"""`store: {url: "memory:"}`: durability off — accepted work dies with the process."""

from __future__ import annotations

import asyncio

from orchestratord.store.base import StoredTask, TaskRow, TaskStore


class MemoryStore(TaskStore):
    durable = False

    async def open(self) -> list[StoredTask]:
        return []

    def admitted(self, row: TaskRow) -> asyncio.Future[None] | None:
        return None

    def output(
        self, task_id: str, chunk: int, tokens: str, started: str | None = None
    ) -> asyncio.Future[None] | None:
        return None

    def ended(
        self, task_id: str, state: str, ended_unix_ms: int, result: str
    ) -> asyncio.Future[None] | None:
        return None

    def forgotten(self, task_ids: list[str]) -> None:
        pass

    async def close(self) -> None:
        pass
