"""The Batch API's runs (`/v1/batches`): durable, inside the same queues, isolated by
priority.

A batch's items run as `batch`-priority tasks of its creator's tenant, so interactive work
always goes first. They are fed into the pool queue a window at a time (`batch.window`),
read from the input file at an offset, so a million-line batch holds a window's worth of
memory and never fills the queue against other clients. Item `N` of batch `B` is task
`B-N`, journaled like any task: a restart requeues the items that were live, and an item
that ended has ended for good — each `custom_id` appears exactly once in the output.

    validating → in_progress → finalizing → completed
                     │ (24 h)  → finalizing → expired
                     └ cancel  → cancelling → cancelled
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import orjson
import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestratord.api_models import ErrorEnvelope
from orchestratord.batch_models import (
    Batch,
    BatchCreate,
    BatchInputLine,
    BatchList,
    BatchStatus,
    RequestCounts,
)
from orchestratord.config import BatchConfig
from orchestratord.principals import Principal
from orchestratord.service import journal
from orchestratord.service.admission import Admission
from orchestratord.service.batch_files import FileShelf, new_id
from orchestratord.service.batch_input import feed_later, item_submission, lines_from
from orchestratord.service.batch_output import write_output
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.records import Door, TaskRecord
from orchestratord.service.refusal import Refusal
from orchestratord.service.tasks import TaskBook
from orchestratord.store import Durable, Snapshot, StoreError, TaskRow, TaskStore
from orchestratord.telemetry import Metrics

log = structlog.get_logger("orchestratord")

COMPLETION_WINDOW_S = 24 * 3600
#: Output files that could not be written are tried again after 1 s, then 2, 4 … this.
OUTPUT_RETRY_MAX_S = 60.0
_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(eq=False)
class _Run:
    """One batch: its document, and where its feeding stands."""

    doc: Batch
    tenant: str
    #: The status finalizing leads to (completed, cancelled, expired).
    final: BatchStatus | None = None
    #: Lines handed to the queue so far, and the byte offset of the next one.
    fed: int = 0
    offset: int | None = 0
    #: Item task ids queued or running.
    live: set[str] = field(default_factory=set)
    retry: asyncio.TimerHandle | None = None
    expiry: asyncio.TimerHandle | None = None
    #: Writing the output files (finalizing), and how often that failed.
    writer: asyncio.Task[None] | None = None
    output_failures: int = 0

    @property
    def counts(self) -> RequestCounts:
        return self.doc.request_counts


class Batches:
    def __init__(
        self,
        store: TaskStore,
        admission: Admission,
        pools: dict[str, PoolDispatcher],
        book: TaskBook,
        metrics: Metrics,
        config: BatchConfig,
    ) -> None:
        self._store = store
        self._admission = admission
        self._pools = pools
        self._book = book
        self._metrics = metrics
        self._window = config.window
        self.files = FileShelf(store, admission.serves, config.max_file_bytes)
        self._runs: dict[str, _Run] = {}
        self._paused = False
        #: Woken whenever a batch reaches a final status, or its output files could not be
        #: written (tests and `orchctl` wait on it).
        self.changed = asyncio.Event()
        book.on_batch_item = self._item_ended

    # -- start ---------------------------------------------------------------------

    def load(self, snapshot: Snapshot) -> None:
        """Before tasks are recovered: what each batch had done."""
        self.files.load(snapshot.files)
        for batch_id, stored in snapshot.batches.items():
            saved = orjson.loads(stored.doc)
            doc = Batch.model_validate(saved["batch"])
            run = _Run(doc, saved["tenant"], saved["final"], fed=stored.fed, offset=None)
            if doc.status not in _FINAL:  # a final batch's items are gone: its doc counts
                doc.request_counts.completed, doc.request_counts.failed = (
                    stored.completed,
                    stored.failed,
                )
            self._runs[batch_id] = run
            self._metrics.on_batch(None, doc.status)

    async def fetch_inputs(self) -> None:
        """Before feeding: the input files of unfinished batches, here (from the store when
        another daemon received them). One whose content is lost fails its batch."""
        for run in self._runs.values():
            if run.doc.status in _FINAL:
                continue
            try:
                await self.files.local(run.doc.input_file_id)
            except Refusal as lost:
                log.error("batch input lost", batch_id=run.doc.id, error=lost.message)
                run.final = "failed"
                self._set(run, "failed")

    def resume(self, live_items: list[TaskRecord]) -> None:
        """After tasks are recovered: count each batch's requeued items, feed, finalize."""
        for rec in live_items:
            assert rec.batch is not None
            run = self._runs.get(rec.batch[0])
            if run is not None:
                run.live.add(rec.task.id)
        for run in self._runs.values():
            if run.doc.status in ("cancelling", "finalizing"):
                self._stop_items(run, "the batch was cancelled or expired before a restart")
            if run.doc.status not in _FINAL:
                self._arm_expiry(run)
                self._advance(run)

    def pause(self) -> None:
        """The daemon is going away: feed nothing more, and take the queued items back out
        of the queues (they stay journaled as queued, and run after the restart)."""
        self._paused = True
        for run in self._runs.values():
            for timer in (run.retry, run.expiry):
                if timer is not None:
                    timer.cancel()
            for task_id in list(run.live):
                rec = self._book.get(task_id)
                if rec is not None and rec.task.state is TaskState.QUEUED:
                    self._pools[rec.task.pool_id].cancel(
                        rec, ErrorCode.POOL_UNAVAILABLE, "shutdown"
                    )

    # -- operations ----------------------------------------------------------------

    async def create(self, req: BatchCreate, owner: Principal) -> Batch:
        """Run an input file of the owner's tenant as that tenant's `batch`-priority tasks."""
        tenant = owner.tenant
        file = self.files.get(req.input_file_id, owner)
        if file.purpose != "batch":
            raise Refusal(ErrorCode.INVALID_PARAMS, "not a batch input file", field="input_file_id")
        if file.endpoint != req.endpoint:
            raise Refusal(
                ErrorCode.INVALID_PARAMS,
                f"the file's lines name {file.endpoint}, not {req.endpoint}", field="endpoint",
            )  # fmt: skip
        now = int(time.time())
        doc = Batch(
            id=new_id("batch"), endpoint=req.endpoint, input_file_id=file.id,
            status="validating", created_at=now, expires_at=now + COMPLETION_WINDOW_S,
            request_counts=RequestCounts(total=file.lines or 0), metadata=req.metadata,
        )  # fmt: skip
        run = _Run(doc, tenant)
        self._runs[doc.id] = run
        self._metrics.on_batch(None, doc.status)
        # every line was checked when the file was uploaded: it runs at once
        durable = self._set(run, "in_progress")
        if durable is not None:
            await durable
        self._arm_expiry(run)
        self._advance(run)
        return doc

    def get(self, batch_id: str, viewer: Principal) -> Batch:
        return self._run(batch_id, viewer).doc

    def listing(self, after: str | None, limit: int, viewer: Principal) -> BatchList:
        ordered = sorted(
            (r for r in self._runs.values() if viewer.owns(r.tenant)),
            key=lambda r: (-r.doc.created_at, r.doc.id),
        )
        if after is not None:
            ids = [r.doc.id for r in ordered]
            if after not in ids:
                raise Refusal(ErrorCode.INVALID_PARAMS, f"no batch {after!r}", field="after")
            ordered = ordered[ids.index(after) + 1 :]
        page = [r.doc for r in ordered[:limit]]
        return BatchList(
            data=page, first_id=page[0].id if page else None,
            last_id=page[-1].id if page else None, has_more=len(ordered) > limit,
        )  # fmt: skip

    async def cancel(self, batch_id: str, viewer: Principal) -> Batch:
        run = self._run(batch_id, viewer)
        if run.doc.status in ("validating", "in_progress"):
            durable = self._set(run, "cancelling")
            if durable is not None:
                await durable
            self._stop_items(run, "the batch was cancelled")
            self._advance(run)
        return run.doc

    def _run(self, batch_id: str, viewer: Principal) -> _Run:
        """The batch, if `viewer` may see it (another tenant's is a 404, like none)."""
        run = self._runs.get(batch_id)
        if run is None or not viewer.owns(run.tenant):
            raise Refusal(ErrorCode.NOT_FOUND, f"no batch {batch_id!r}", field="batch_id")
        return run

    # -- feeding -------------------------------------------------------------------

    def _advance(self, run: _Run) -> None:
        """Feed what the window allows; write the output once nothing is left to run."""
        status = run.doc.status
        if status == "in_progress":
            self._feed(run)
            if run.fed >= run.counts.total and not run.live:
                self._begin_final(run, "completed")
        elif status == "cancelling" and not run.live:
            self._begin_final(run, "cancelled")
        elif status == "finalizing" and not (run.live or run.writer or run.retry):
            run.writer = asyncio.get_running_loop().create_task(self._finalize(run))

    def _feed(self, run: _Run) -> None:
        if run.retry is not None or self._paused:
            return
        doc = run.doc
        with self.files.path(doc.input_file_id).open("rb") as source:
            lines = lines_from(source, run.offset, skip=run.fed)
            while len(run.live) < self._window and run.fed < run.counts.total:
                raw, next_offset = next(lines)
                line = run.fed
                item = BatchInputLine.model_validate_json(raw)
                task_id = f"{doc.id}-{line}"
                try:
                    sub = item_submission(
                        item, tenant=run.tenant, correlation_id=doc.id, task_id=task_id,
                        batch=(doc.id, line),
                    )  # fmt: skip
                    rec = self._admission.admit(sub)
                except Refusal as refused:
                    later = feed_later(refused)
                    if later is not None:
                        run.retry = asyncio.get_running_loop().call_later(later, self._retry, run)
                        return
                    self._fail_line(run, line, item, refused)
                else:
                    run.live.add(rec.task.id)
                run.fed, run.offset = line + 1, next_offset

    def _retry(self, run: _Run) -> None:
        run.retry = None
        self._advance(run)

    def _fail_line(self, run: _Run, line: int, item: BatchInputLine, refused: Refusal) -> None:
        """A line that can never run (its model is no longer served...): journaled as an
        item that failed, so it is reported once and never retried."""
        task_id = f"{run.doc.id}-{line}"
        log.warning(
            "batch line failed", batch_id=run.doc.id, line=line, code=refused.code.value,
            error=refused.message,
        )  # fmt: skip
        error = ErrorEnvelope.of(refused.code, refused.message, field=refused.field)
        spec = orjson.dumps({"door": _door(item.url).value}).decode()
        row = TaskRow(task_id, "", "failed", spec, journal.unix_ms(), run.doc.id, line)
        self._store.admitted(row)
        outcome = {"end": None, "error": error.model_dump(exclude_none=True)}
        self._store.ended(task_id, "failed", journal.unix_ms(), orjson.dumps(outcome).decode())
        run.counts.failed += 1
        self._metrics.on_batch_item("failed")

    def _item_ended(self, rec: TaskRecord) -> None:
        assert rec.batch is not None
        run = self._runs.get(rec.batch[0])
        if run is None or rec.task.id not in run.live:
            return
        run.live.discard(rec.task.id)
        outcome = "completed" if rec.task.state is TaskState.COMPLETED else "failed"
        if outcome == "completed":
            run.counts.completed += 1
        else:
            run.counts.failed += 1
        self._metrics.on_batch_item(outcome)
        self._advance(run)

    def _stop_items(self, run: _Run, why: str) -> None:
        for task_id in list(run.live):
            rec = self._book.get(task_id)
            if rec is not None:
                self._pools[rec.task.pool_id].cancel(rec, ErrorCode.CANCELED, why)

    def _arm_expiry(self, run: _Run) -> None:
        delay = max(0.0, run.doc.expires_at - time.time())
        run.expiry = asyncio.get_running_loop().call_later(delay, self._expire, run)

    def _expire(self, run: _Run) -> None:
        if run.doc.status in ("validating", "in_progress"):
            run.final = "expired"
            self._set(run, "finalizing")
            self._stop_items(run, "the batch expired (completion_window)")
            self._advance(run)

    def _set(self, run: _Run, status: BatchStatus) -> Durable | None:
        """Move a batch to `status` (stamping its time) and journal it."""
        doc, now = run.doc, int(time.time())
        self._metrics.on_batch(doc.status, status)
        doc.status = status
        stamp = _STAMPS.get(status)
        if stamp is not None:
            setattr(doc, stamp, now)
        if status in _FINAL:
            for timer in (run.expiry, run.retry):
                if timer is not None:
                    timer.cancel()
            self._wake()
        saved = {"batch": doc.model_dump(), "tenant": run.tenant, "final": run.final}
        return self._store.put_batch(doc.id, doc.created_at, orjson.dumps(saved).decode())

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # -- finalizing ----------------------------------------------------------------

    def _begin_final(self, run: _Run, final: BatchStatus) -> None:
        run.final = final
        self._set(run, "finalizing")
        self._advance(run)

    async def _finalize(self, run: _Run) -> None:
        """Write the output and error files, then end the batch. Done again from the start
        if it fails (later, `_output_failed`) or a restart interrupts it."""
        doc, final = run.doc, run.final or "completed"
        try:
            await write_output(self.files, self._store, doc, final, run.tenant)
        except Exception as e:  # a full disk, the store gone: whatever it is, try again later
            self._output_failed(run, e)
            return
        durable = self._set(run, final)
        if durable is not None:
            try:
                await durable
            except StoreError as e:  # its items stay: a restart finalizes it again
                log.warning("batch end not journaled", batch_id=doc.id, error=str(e))
                return
        self._store.drop_batch_items(doc.id)
        log.info("batch ended", batch_id=doc.id, status=final, **doc.request_counts.model_dump())

    def _output_failed(self, run: _Run, error: Exception) -> None:
        """The batch stays `finalizing` (its items' results are journaled) and its files are
        written again after a backoff — unless the daemon is going away: its restart does."""
        run.writer = None
        if self._paused:  # (the store closes with the daemon: that is not the disk failing)
            log.info("batch output left for the restart", batch_id=run.doc.id, error=repr(error))
            return
        run.output_failures += 1
        delay = min(OUTPUT_RETRY_MAX_S, 2.0 ** (run.output_failures - 1))
        self._metrics.on_batch_output_failed()
        log.error(
            "batch output not written", batch_id=run.doc.id, error=repr(error),
            failures=run.output_failures, retry_in_s=delay,
        )  # fmt: skip
        run.retry = asyncio.get_running_loop().call_later(delay, self._retry, run)
        self._wake()


_STAMPS: dict[str, str] = {
    "in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
    "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at",
    "cancelled": "cancelled_at",
}  # fmt: skip


def _door(url: str) -> Door:
    return Door.OPENAI_CHAT if url == "/v1/chat/completions" else Door.OPENAI_COMPLETION
