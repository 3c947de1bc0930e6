"""The task book: every task the daemon knows — live ones, and finished ones for
`retention_s` (at most `max_retained_tasks`) — and `finish`, the single terminal path.

Memory is budgeted in bytes (`server.memory_budget_bytes`). A live task is charged, at
admission, the most it can come to hold — its request, a full stream buffer, its output up
to `max_tokens` — and a finished one what it actually holds (its stream served from its
output buffer when it can be: no object per token once a task has ended). Finished tasks
are forgotten oldest first whenever the total would pass the budget (their ids then answer
`EXPIRED`); when live tasks alone would, admission refuses (`make_room`).

`finish` is the only place a task's stream gets its last event. How it ends is derived from
its terminal (state, code) by one table: an `end` event with a finish reason, or an `error`
event carrying the envelope. It is idempotent, so paths that race to end a task (a client
cancel and an engine error, a drain deadline and a SIGTERM) may all call it; the first wins.

The last stage of the daemon: it imports no other stage (the record it keeps aside).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from functools import partial

import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Determinism, TaskState
from orchestratord.api_models import EndEvent, ErrorEnvelope
from orchestratord.service import journal
from orchestratord.service.records import TaskRecord, request_bytes, session_name
from orchestratord.service.streams import StreamLimits
from orchestratord.store import StoreError, TaskStore
from orchestratord.telemetry import Metrics, tracing
from worker_adapters.base import FinishReason

log = structlog.get_logger("orchestratord")

#: What the budget charges, measured on CPython 3.11 (docs/RELIABILITY.md): a task's fixed
#: state (record, task, stream, status event); one stream event (a token's tuple, its text
#: and ids objects, its deque slot); one output entry beyond its text (`Output`), with the
#: text a token is assumed to average when reserving.
RECORD_BYTES = 4096
EVENT_BYTES = 200
OUTPUT_ENTRY_BYTES = 32
TOKEN_TEXT_BYTES = 8
#: Forgotten task ids remembered, to answer EXPIRED rather than "never heard of it".
EXPIRED_IDS_REMEMBERED = 65_536


#: Terminal (state, code) pairs that end a stream with `end`, and their finish reason
#: (None: the engine's own, `stop` or `length`). Every other ending is an `error` event.
_CLEAN_ENDINGS: dict[tuple[TaskState, ErrorCode | None], FinishReason | None] = {
    (TaskState.COMPLETED, None): None,
    (TaskState.CANCELED, ErrorCode.CANCELED): "canceled",
}


def _publish(rec: TaskRecord) -> None:
    """Put `rec`'s held-back ending on its stream if its journal write is done — or
    failed (the store logged it): a client always hears the end. Once."""
    if rec.unpublished is None or not rec.unpublished[0].done():
        return
    (durable, ending), rec.unpublished = rec.unpublished, None
    # retrieved (a Durable is never cancelled): a failed write is the store's to report
    durable.exception()
    ending()


def _both(first: Callable[[], None], then: Callable[[], None]) -> None:
    first()
    then()


class TaskBook:
    def __init__(
        self,
        metrics: Metrics,
        now_ms: Callable[[], float],
        store: TaskStore,
        *,
        retention_s: float,
        max_retained: int,
        budget_bytes: int,
        streams: StreamLimits,
        max_output_bytes: int,
    ) -> None:
        self.metrics = metrics
        self._store = store
        self._now_ms = now_ms
        self._retention_ms = retention_s * 1000.0
        self._max_retained = max_retained
        self._tasks: dict[str, TaskRecord] = {}
        #: Finished task ids, oldest first (insertion order is end order).
        self._finished: dict[str, float] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._budget = budget_bytes
        self._stream_events = streams.events
        self._max_output_bytes = max_output_bytes
        #: Bytes charged to live tasks, and to retained finished ones.
        self.live_bytes = 0
        self.retained_bytes = 0
        #: Forgotten task ids -> their tenant (only its tenant may learn they existed).
        self._expired: OrderedDict[str, str] = OrderedDict()
        #: Told when a Batch API item ends (the batch feeds its next line).
        self.on_batch_item: Callable[[TaskRecord], None] | None = None
        #: The daemon is shutting down.
        self.closing = False

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def get(self, task_id: str) -> TaskRecord | None:
        return self._tasks.get(task_id)

    def __iter__(self) -> Iterator[TaskRecord]:
        """Every task tracked: live, and ended within its retention."""
        return iter(self._tasks.values())

    def expired(self, task_id: str) -> str | None:
        """The tenant of `task_id` if it was a task whose record has been forgotten."""
        return self._expired.get(task_id)

    # -- the memory budget -------------------------------------------------------------

    def reservation(self, request_bytes: int, max_tokens: int) -> int:
        """The most a live task with this request can come to hold, its tokens' text
        assumed to average TOKEN_TEXT_BYTES (`outgrown` charges what goes past that)."""
        events = min(max_tokens, self._stream_events) * EVENT_BYTES
        text = min(max_tokens * TOKEN_TEXT_BYTES, self._max_output_bytes)
        return RECORD_BYTES + request_bytes + events + max_tokens * OUTPUT_ENTRY_BYTES + text

    def _text_reserved(self, max_tokens: int) -> int:
        """The token text a reservation assumed: in the stream's events (inside
        EVENT_BYTES) and in the output."""
        in_events = min(max_tokens, self._stream_events) * TOKEN_TEXT_BYTES
        return in_events + min(max_tokens * TOKEN_TEXT_BYTES, self._max_output_bytes)

    def outgrown(self, rec: TaskRecord) -> None:
        """A running task holds more token text than it was charged for (its engine's
        tokens are longer than assumed): charge it what it holds, forgetting finished tasks
        to make room. Admission refuses new tasks while live ones fill the budget; the
        task's stream and output are bounded in bytes (`stream_buffer_bytes`,
        `max_output_bytes`), so this stops."""
        text = rec.stream.text_bytes + rec.output.text_bytes
        if text <= rec.text_charged:
            return
        self.live_bytes += text - rec.text_charged
        rec.footprint += text - rec.text_charged
        rec.text_charged = text
        self._shed()

    def _held(self, rec: TaskRecord) -> int:
        """What a finished task holds (a stream not compacted: its events' text too)."""
        stream = rec.stream
        events = 0 if stream.compacted else min(stream.next_id, self._stream_events)
        return RECORD_BYTES + events * EVENT_BYTES + stream.text_bytes + rec.output.footprint

    def compact(self, rec: TaskRecord) -> None:
        """Once a retained task's stream has its ending, serve it from the output buffer
        and charge it only that — when no reader is reading it: a reader still to read
        the stream's events (the usual one-request stream, whose reader takes the whole
        answer after its end) would otherwise rebuild each token event the compaction
        dropped. The last reader to leave compacts it (`Orchestrator.reading`)."""
        if rec.readers or rec.task.id not in self._finished:
            return
        if rec.stream.compact(rec.output):
            held = self._held(rec)
            self.retained_bytes += held - rec.footprint
            rec.footprint = held

    def make_room(self, nbytes: int) -> bool:
        """Whether a new task charged `nbytes` fits the budget, forgetting finished tasks
        (oldest first) to make it fit; False if live tasks alone leave no room."""
        if self.live_bytes + nbytes > self._budget:
            return False
        while self.live_bytes + self.retained_bytes + nbytes > self._budget and self._finished:
            self.forget(next(iter(self._finished)))
        return self.live_bytes + self.retained_bytes + nbytes <= self._budget

    def add(self, rec: TaskRecord, *, recovered: bool = False) -> None:
        """Track a newly accepted task, journaling it (`rec.durable` says when it is
        durable); a task `recovered` from the store is there already."""
        self._tasks[rec.task.id] = rec
        if not rec.footprint:  # recovered: charged what its request may come to
            size = request_bytes(rec.request) if rec.request is not None else 0
            rec.footprint = self.reservation(size, rec.task.max_tokens)
        rec.text_charged = self._text_reserved(rec.task.max_tokens)
        self.live_bytes += rec.footprint
        if self._store.durable:
            if rec.task.determinism is Determinism.STRICT:
                rec.checkpoint_at = journal.STRICT_CHECKPOINT
            if not recovered:
                rec.durable = self._store.admitted(journal.task_row(rec, self._now_ms()))

    def restore(self, rec: TaskRecord, ended_at: float) -> None:
        """Track a task that had ended before a restart, for the rest of its retention."""
        self._tasks[rec.task.id] = rec
        rec.ended_at = ended_at
        self._retain(rec, ended_at)

    def checkpoint(self, rec: TaskRecord) -> None:
        """Journal a strict task's output not journaled yet (every `STRICT_CHECKPOINT`
        entries: a rerun after a restart must reproduce it)."""
        if not self._store.durable:
            return
        self._store.output(rec.task.id, rec.chunks, journal.output_chunk(rec, rec.journaled))
        rec.chunks += 1
        rec.journaled = len(rec.output)
        rec.checkpoint_at = rec.journaled + journal.STRICT_CHECKPOINT

    async def delivering(self, rec: TaskRecord) -> bool:
        """Tokens of `rec` are about to reach a client: return once a restart would know
        (the task journaled as streamed, with its `started` event), so it never reruns a
        task whose tokens a client saw. Until then nothing needs journaling: a task nobody
        watches (a Batch API item, a non-streamed completion, a stream not yet opened) is
        journaled at admission and at its end only. False: the store could not write; the
        task failed with STORE_UNAVAILABLE (its stream says so) and the tokens stay unsent."""
        if not self._store.durable:
            return True
        if rec.announced is None:
            rec.announced = self._store.streamed(rec.task.id, journal.started(rec))
        if rec.announced is not None:
            if not rec.announced.done():  # nothing to overlap: the reader waits on it
                self._store.hurry()
            try:
                await rec.announced  # (other readers may wait on it too: `Durable`)
            except StoreError as e:
                self.finish(rec, TaskState.FAILED, ErrorCode.STORE_UNAVAILABLE, str(e))
                return False
            # a task that ended before its reader came was announced by its end's write:
            # its ending goes with its tokens, not a loop turn after them
            _publish(rec)
        return True

    def finish(
        self,
        rec: TaskRecord,
        state: TaskState,
        code: ErrorCode | None = None,
        message: str = "",
        *,
        finish_reason: FinishReason | None = None,
        engine: str | None = None,
        retriable: bool | None = None,
        policy_label: str | None = None,
    ) -> bool:
        """End `rec` in terminal `state` with `code` (None: completed), report it on its
        stream, count and log it once. False, and nothing done, if it had already ended."""
        if rec.ended:
            return False
        task = rec.task
        if task.state is not state:  # the queue has already moved tasks that left it unrun
            task.transition(state, code)
        task.error = code
        now = self._now_ms()
        rec.ended_at = now
        end = None
        if (state, code) in _CLEAN_ENDINGS:
            rec.finish_reason = _CLEAN_ENDINGS[state, code] or finish_reason or "stop"
            decode_ms = round(now - (rec.first_token_at or rec.started_at or now))
            end = EndEvent(
                tokens_out=rec.tokens_out, decode_ms=decode_ms, finish_reason=rec.finish_reason,
                tokens_in=rec.tokens_in,
            )  # fmt: skip
            ending = partial(rec.stream.end, end)
        else:
            assert code is not None, f"{state} needs an error code"
            rec.error = ErrorEnvelope.of(
                code, message, retriable=retriable, engine=engine, pool_id=task.pool_id,
                policy_label=policy_label,
            )  # fmt: skip
            ending = partial(rec.stream.error, rec.error)
        rec.request = None
        rec.replay = None
        durable = None
        # a batch item the daemon stops on its way down is not over: journaled as live, it
        # runs again after the restart
        shelved = self.closing and rec.batch is not None and state is not TaskState.COMPLETED
        if self._store.durable and not shelved:
            # the result carries the output not journaled yet, and the `started` event
            # when no client saw a token
            result = journal.result(rec, end, with_started=rec.announced is None)
            durable = self._store.ended(task.id, state.value, journal.unix_ms(), result)
            rec.journaled = len(rec.output)
            if rec.announced is None:  # a reader still to come delivers once it is durable
                rec.announced = durable
        if rec.batch is not None and self.on_batch_item is not None and not shelved:
            ending = partial(_both, ending, partial(self.on_batch_item, rec))
        elif rec.batch is None:
            ending = partial(_both, ending, partial(self.compact, rec))
        if durable is None:
            ending()
        else:  # clients (and batches) hear how it ended once a restart would say the same
            rec.unpublished = (durable, ending)
            durable.add_done_callback(lambda _: _publish(rec))
        self.metrics.on_finished(rec)
        # one line per task (never per token), with everything needed to follow it
        log.info(
            "task ended", task_id=task.id, state=state.value, pool_id=task.pool_id,
            replica_id=rec.replica_id, engine=rec.engine, tokens_out=rec.tokens_out,
            finish_reason=rec.finish_reason, error=rec.error.code if rec.error else None,
            tenant=task.tenant, session_id=session_name(task.session_id),
            correlation_id=rec.correlation_id, **tracing.log_ids(rec.spans),
        )  # fmt: skip
        tracing.finished(
            rec.spans, state.value, code.value if code else None, rec.tokens_in, rec.tokens_out
        )
        self.live_bytes -= rec.footprint
        if rec.batch is None:
            self._retain(rec, now)
        else:  # its batch's output files keep it; its record goes now
            self._tasks.pop(task.id, None)
        return True

    # -- retention ---------------------------------------------------------------------

    def _retain(self, rec: TaskRecord, now: float) -> None:
        rec.footprint = self._held(rec)
        self.retained_bytes += rec.footprint
        self._finished[rec.task.id] = now
        self.compact(rec)  # (when its ending is there: published, or from before a restart)
        self._shed()
        if self._expiry is None:
            self._arm_expiry()

    def _shed(self) -> None:
        """Forget finished tasks, oldest first, past the count or the memory budget."""
        while len(self._finished) > self._max_retained or (
            self.live_bytes + self.retained_bytes > self._budget and self._finished
        ):
            self.forget(next(iter(self._finished)))

    def _arm_expiry(self) -> None:
        """One timer for the oldest finished task (retention is first in, first out)."""
        self._expiry = None
        if self._finished:
            oldest = next(iter(self._finished.values()))
            delay_s = max(0.0, (oldest + self._retention_ms - self._now_ms()) / 1000.0)
            self._expiry = asyncio.get_running_loop().call_later(delay_s, self._expire)

    def _expire(self) -> None:
        horizon = self._now_ms() - self._retention_ms
        for task_id, ended in list(self._finished.items()):
            if ended > horizon:
                break
            self.forget(task_id)
        self._arm_expiry()

    def forget(self, task_id: str) -> None:
        """Drop a finished task's record (its status and events are gone: EXPIRED)."""
        if self._finished.pop(task_id, None) is not None:
            rec = self._tasks.pop(task_id, None)
            if rec is not None:
                self.retained_bytes -= rec.footprint
            self._expired[task_id] = rec.task.tenant if rec is not None else ""
            if len(self._expired) > EXPIRED_IDS_REMEMBERED:
                self._expired.popitem(last=False)
            self._store.forgotten([task_id])

    def forget_stored(self, task_id: str) -> None:
        """Delete a journaled task this book never tracked (its retention ended while the
        daemon was down)."""
        self._store.forgotten([task_id])

    def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
