"""A finished batch's output and error files, in OpenAI's batch line format: every input
line once, in order — joined with its item's journaled result, read from the store a page
at a time (a million-line batch never sits in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestratord.api_models import EndEvent
from orchestratord.batch_models import Batch, BatchInputLine, BatchStatus
from orchestratord.service import journal
from orchestratord.service.batch_files import FileShelf
from orchestratord.service.openai_requests import completion_body
from orchestratord.service.records import Door
from orchestratord.store import BatchItem, TaskStore

#: Finished items read from the store, and lines written, per page.
PAGE = 512

#: Why lines that never ran did not, by the status the batch ends in.
_NEVER_RAN = {"cancelled": "batch_cancelled", "expired": "batch_expired"}


async def write_output(
    files: FileShelf, store: TaskStore, doc: Batch, final: BatchStatus, tenant: str
) -> None:
    """Write `doc`'s output and error files from the start — every line of its input once,
    in order — publish those that hold lines (owned by `tenant`), and name them in `doc`.
    Raises whatever stopped it (the disk, the store); `doc` names no file then, and the
    next try writes both again."""
    out_id, err_id = f"file-{doc.id}-output", f"file-{doc.id}-errors"
    written = {out_id: 0, err_id: 0}
    for file_id in written:
        files.start_output(file_id)
    source = await files.local(doc.input_file_id)
    async for page in output_pages(store, source, doc, _NEVER_RAN.get(final)):
        for file_id, lines in ((out_id, page[0]), (err_id, page[1])):
            if lines:
                await files.append(file_id, lines)
                written[file_id] += len(lines)
    for file_id, count in written.items():
        if count:
            kind = "output" if file_id == out_id else "errors"
            await files.keep_output(file_id, f"{doc.id}_{kind}.jsonl", tenant)
    doc.output_file_id = out_id if written[out_id] else None
    doc.error_file_id = err_id if written[err_id] else None


async def output_pages(
    store: TaskStore, input_path: Path, doc: Batch, reason: str | None
) -> AsyncIterator[tuple[list[bytes], list[bytes]]]:
    """(output lines, error lines) page by page: each input line joined with its item's
    result; lines that never ran are errors with `reason`."""
    results: list[BatchItem] = []
    after = -1
    out: list[bytes] = []
    err: list[bytes] = []
    with input_path.open("rb") as source:
        for line, raw in enumerate(source):
            if not results and after < line:
                results = await store.batch_items(doc.id, after, PAGE)
                after = results[-1].line if results else doc.request_counts.total
                results.reverse()  # popped from the end, in line order
            custom_id = BatchInputLine.model_validate_json(raw).custom_id
            if results and results[-1].line == line:
                ok, text = _result_line(doc.id, custom_id, results.pop(), reason)
                (out if ok else err).append(text)
            else:
                err.append(_error_line(doc.id, line, custom_id, reason or "INTERNAL",
                                       "never ran"))  # fmt: skip
            if len(out) + len(err) >= PAGE:
                yield out, err
                out, err = [], []
    yield out, err


def _result_line(
    batch_id: str, custom_id: str, item: BatchItem, reason: str | None
) -> tuple[bool, bytes]:
    """An output line (True) for an item that completed, else an error line."""
    spec: dict[str, Any] = orjson.loads(item.spec)
    outcome: dict[str, Any] = orjson.loads(item.result)
    task_id = f"{batch_id}-{item.line}"
    if item.state == TaskState.COMPLETED.value and outcome.get("end"):
        end = EndEvent.model_validate(outcome["end"])
        text = "".join(t for _, t, _ in journal.tokens_of(item.output, outcome))
        body = completion_body(
            Door(spec["door"]), task_id, spec["created"], spec["model"], text, end
        )
        line = {"id": f"batch_req_{task_id}", "custom_id": custom_id, "error": None,
                "response": {"status_code": 200, "request_id": task_id, "body": body}}  # fmt: skip
        return True, orjson.dumps(line) + b"\n"
    error = outcome.get("error") or {
        "code": reason or ErrorCode.CANCELED.value,
        "message": "canceled",
    }
    return False, _error_line(batch_id, item.line, custom_id, error["code"], error["message"])


def _error_line(batch_id: str, line: int, custom_id: str, code: str, message: str) -> bytes:
    task_id = f"{batch_id}-{line}"
    body = {"id": f"batch_req_{task_id}", "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}  # fmt: skip
    return orjson.dumps(body) + b"\n"
