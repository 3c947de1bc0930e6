"""Batch API files (`/v1/files`): input files checked line by line as they arrive, and the
output and error files batches write. Contents live in the store's `files_dir`, one file
each; their documents live in the store, with the tenant that owns each (only it, and
operators, see the file).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson

from orchestrator_core.errors import ErrorCode
from orchestratord.batch_models import FileDeleted, FileList, FileObject
from orchestratord.principals import Principal
from orchestratord.service.batch_input import InputCheck
from orchestratord.service.refusal import Refusal
from orchestratord.store import StoreError, TaskStore


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class FileShelf:
    def __init__(self, store: TaskStore, serves: Callable[[str], bool], max_bytes: int) -> None:
        self._store = store
        self._serves = serves
        self._max_bytes = max_bytes
        self._files: dict[str, FileObject] = {}
        self._owners: dict[str, str] = {}

    def load(self, docs: dict[str, str]) -> None:
        for file_id, stored in docs.items():
            data = orjson.loads(stored)
            self._owners[file_id] = data.pop("tenant", "default")  # older stores: default
            self._files[file_id] = FileObject.model_validate(data)

    @property
    def _dir(self) -> Path:
        if self._store.files_dir is None:
            raise Refusal(
                ErrorCode.STORE_UNAVAILABLE,
                "the Batch API needs a durable store (store.url: sqlite:)",
            )
        return self._store.files_dir

    def path(self, file_id: str) -> Path:
        return self._dir / f"{file_id}.jsonl"

    async def local(self, file_id: str) -> Path:
        """The file's content here — fetched from the store when another daemon wrote it
        (daemons sharing a store each have their own `files_dir`)."""
        path = self.path(file_id)
        if not path.exists() and not await self._store.fetch_content(file_id, path):
            raise Refusal(
                ErrorCode.STORE_UNAVAILABLE,
                f"the content of file {file_id!r} is neither here nor in the task store",
            )
        return path

    def get(self, file_id: str, viewer: Principal) -> FileObject:
        """The file, if `viewer` may see it (another tenant's is a 404, like none)."""
        found = self._files.get(file_id)
        if found is None or not viewer.owns(self._owners[file_id]):
            raise Refusal(ErrorCode.NOT_FOUND, f"no file {file_id!r}", field="file_id")
        return found

    def listing(self, viewer: Principal) -> FileList:
        mine = (f for f in self._files.values() if viewer.owns(self._owners[f.id]))
        return FileList(data=sorted(mine, key=lambda f: -f.created_at))

    async def upload(
        self, filename: str, chunks: AsyncIterator[bytes], owner: Principal
    ) -> FileObject:
        """Keep a batch input file if every line is a request this daemon can run; else
        keep nothing and refuse, naming the bad lines."""
        file_id = new_id("file")
        directory = self._dir
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".{file_id}.part"
        check = InputCheck(self._serves)
        size = 0
        try:
            with partial.open("wb") as out:
                rest = b""
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise Refusal(
                            ErrorCode.INVALID_PARAMS,
                            f"the file is larger than {self._max_bytes} bytes",
                            field="file",
                        )
                    out.write(chunk)
                    *lines, rest = (rest + chunk).split(b"\n")
                    for line in lines:
                        check.line(line)
                if rest.strip():
                    check.line(rest)
            lines_total, endpoint = check.verdict()
            await asyncio.to_thread(os.replace, partial, self.path(file_id))
        finally:
            partial.unlink(missing_ok=True)
        await self._keep(file_id)
        doc = FileObject(
            id=file_id, bytes=size, created_at=int(time.time()), filename=filename,
            purpose="batch", lines=lines_total, endpoint=endpoint,
        )  # fmt: skip
        await self._put(doc, owner.tenant)
        return doc

    async def append(self, file_id: str, lines: list[bytes]) -> None:
        """Append `lines` to an output file being written (`start_output` first)."""
        await asyncio.to_thread(_append, self.path(file_id), lines)

    def start_output(self, file_id: str) -> None:
        """An empty output file (a batch finalized again after a restart starts over)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        self.path(file_id).write_bytes(b"")

    async def keep_output(self, file_id: str, filename: str, tenant: str) -> FileObject:
        """Publish an output file written by `write_output`, owned by `tenant`."""
        size = self.path(file_id).stat().st_size
        await self._keep(file_id)
        doc = FileObject(
            id=file_id, bytes=size, created_at=int(time.time()), filename=filename,
            purpose="batch_output",
        )  # fmt: skip
        await self._put(doc, tenant)
        return doc

    async def _keep(self, file_id: str) -> None:
        """The content goes to the store before the document does: a document the store
        holds always has its content there too."""
        try:
            await self._store.keep_content(file_id, self.path(file_id))
        except StoreError as e:
            self.path(file_id).unlink(missing_ok=True)
            raise Refusal(ErrorCode.STORE_UNAVAILABLE, str(e)) from None

    async def _put(self, doc: FileObject, tenant: str) -> None:
        stored = orjson.dumps({**doc.model_dump(), "tenant": tenant}).decode()
        durable = self._store.put_file(doc.id, doc.created_at, stored)
        if durable is not None:
            await durable
        self._files[doc.id] = doc
        self._owners[doc.id] = tenant

    def delete(self, file_id: str, viewer: Principal) -> FileDeleted:
        self.get(file_id, viewer)
        self._store.delete_file(file_id)
        del self._files[file_id], self._owners[file_id]
        self.path(file_id).unlink(missing_ok=True)
        return FileDeleted(id=file_id, deleted=True)


def _append(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as out:
        out.writelines(lines)
