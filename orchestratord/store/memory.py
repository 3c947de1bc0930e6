"""`store: {url: "memory:"}`: durability off — accepted work dies with the process."""

from __future__ import annotations

from orchestratord.store.base import BatchItem, Durable, Snapshot, TaskRow, TaskStore


class MemoryStore(TaskStore):
    durable = False

    async def open(self) -> Snapshot:
        return Snapshot()

    def admitted(self, row: TaskRow) -> Durable | None:
        return None

    def output(self, task_id: str, chunk: int, tokens: str) -> None:
        pass

    def streamed(self, task_id: str, started: str) -> Durable | None:
        return None

    def ended(self, task_id: str, state: str, ended_unix_ms: int, result: str) -> Durable | None:
        return None

    def forgotten(self, task_ids: list[str]) -> None:
        pass

    def hurry(self) -> None:
        pass  # nothing is pending

    def put_file(self, file_id: str, created_at: int, doc: str) -> Durable | None:
        raise NotImplementedError("the Batch API needs a durable store")

    def delete_file(self, file_id: str) -> None:
        raise NotImplementedError("the Batch API needs a durable store")

    def put_batch(self, batch_id: str, created_at: int, doc: str) -> Durable | None:
        raise NotImplementedError("the Batch API needs a durable store")

    async def batch_items(self, batch_id: str, after_line: int, limit: int) -> list[BatchItem]:
        raise NotImplementedError("the Batch API needs a durable store")

    def drop_batch_items(self, batch_id: str) -> None:
        raise NotImplementedError("the Batch API needs a durable store")

    def abandon(self, why: str) -> None:
        pass  # nothing is written anyway

    async def close(self) -> None:
        pass
