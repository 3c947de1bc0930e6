"""The runner: relays one task's engine stream into its task stream.

It runs as an asyncio task of its own, started by the pool's dispatcher once a slot lease is
taken. It ends the task itself when the engine finishes (`completed`), when it is cancelled
while the task still runs (the daemon is going away: `canceled`), and on a bug (`failed`,
`INTERNAL`). An engine failure is *returned* instead, for the dispatcher to decide: run the
task elsewhere (nothing reached the client yet) or fail it.

The runner never calls back into the dispatcher: the dispatcher releases the lease and pumps
again in the runner task's done-callback — which runs even when the runner was cancelled
before its first step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestratord.api_models import StartedEvent
from orchestratord.service.journal import Journaled
from orchestratord.service.records import TaskRecord
from orchestratord.service.tasks import TaskBook
from orchestratord.telemetry import tracing
from pool_managerd.replica import Replica
from worker_adapters.base import AdapterError, End, StallGuard, StreamEvent, Token

log = structlog.get_logger("orchestratord")


@dataclass(frozen=True, slots=True)
class RunLimits:
    #: A stream that sends nothing for this long fails with DECODE_TIMEOUT.
    token_timeout_s: float
    #: Output kept per task for its status (the stream itself is bounded separately).
    max_output_bytes: int


async def run_task(
    rec: TaskRecord,
    replica: Replica,
    limits: RunLimits,
    book: TaskBook,
    now_ms: Callable[[], float],
) -> AdapterError | None:
    """Relay the engine's answer to `rec`; return the engine's failure, if one struck while
    the task still ran, without ending the task."""
    task, request, adapter = rec.task, rec.request, replica.adapter
    assert request is not None and adapter is not None
    rec.replica_id, rec.engine, rec.started_at = replica.id, replica.engine, now_ms()
    rec.started_event = StartedEvent(
        task_id=task.id, queue_position=rec.queue_position,
        predicted_start_ms=rec.predicted_start_ms, pool_id=task.pool_id, replica_id=replica.id,
        engine=replica.engine, engine_version=replica.engine_version, seed=rec.seed,
    )  # fmt: skip
    rec.stream.started(rec.started_event)
    running = TaskState.RUNNING
    stream, cap, output = rec.stream, limits.max_output_bytes, rec.output
    emit_tokens = stream.tokens

    def on_events(events: list[StreamEvent]) -> bool:
        """The hot path, run where the adapter pushes from (an HTTP engine's connection
        callback), once per engine read: a tuple per token, then one append to the output
        and one to the task's stream for all of them. False stops the engine's stream."""
        guard.beat()
        if task.state is not running:  # canceled meanwhile: stop reading
            return False
        end = events[-1] if isinstance(events[-1], End) else None
        tokens: list[Journaled] = []
        index = rec.tokens_out
        for event in events:
            if isinstance(event, Token):
                tokens.append((index, event.text, event.ids))
                index += event.count
        if tokens:
            if rec.first_token_at is None:
                rec.first_token_at = now_ms()
                tracing.first_token(rec.spans, rec.first_token_at - rec.admitted_at)
            diverged = _diverged(rec.replay, tokens) if rec.replay else None
            if not output.extend(tokens, cap):
                rec.output_truncated = True
            if len(output) >= rec.checkpoint_at:  # a strict task's periodic one
                book.checkpoint(rec)
            emit_tokens(tokens)
            if stream.text_bytes + output.text_bytes > rec.text_charged:
                book.outgrown(rec)  # longer tokens than its reservation assumed
            if diverged is not None:
                rec.tokens_out = diverged[0]
                _fail_replay(rec, diverged, book)
                return False
            rec.tokens_out = index
        if end is not None:
            complete(end)
        return True

    def complete(end: End) -> None:
        """The task ends with the read that brought its `End`, so a reader that has not
        yet sent that read's tokens sends them and the ending in one write."""
        rec.tokens_in, rec.engine_end = end.tokens_in, end
        # the engine's count is authoritative (bytes of a cut-off UTF-8 sequence at the
        # very end are tokens without text)
        rec.tokens_out = max(rec.tokens_out, end.tokens_out)
        book.finish(rec, TaskState.COMPLETED, finish_reason=end.finish_reason)

    try:
        async with StallGuard(limits.token_timeout_s, replica.engine) as guard:
            await adapter.relay(request, on_events)
    except AdapterError as e:
        return e if task.state is running else None
    except asyncio.CancelledError:
        # A client cancel ends the task before cancelling this; here the daemon goes away.
        book.finish(rec, TaskState.CANCELED, ErrorCode.CANCELED)
        raise
    except Exception as e:  # a bug: never leave the task hanging, never leak a traceback
        log.exception("runner crashed", task_id=task.id, pool_id=task.pool_id)
        why = f"internal error: {type(e).__name__}"
        book.finish(rec, TaskState.FAILED, ErrorCode.INTERNAL, why)
        return None
    if task.state is running:  # the stream ended without an End
        return AdapterError(
            ErrorCode.WORKER_RESET,
            "the engine closed the stream without finishing",
            engine=replica.engine,
        )
    return None


def _diverged(replay: deque[Journaled], tokens: list[Journaled]) -> Journaled | None:
    """A strict task resumed after a restart must reproduce the tokens it had journaled
    (`replay`, consumed here): the first of `tokens` that does not, cut from `tokens` with
    all after it; None when they all do."""
    for i, token in enumerate(tokens):
        if not replay:
            break
        if token != replay[0]:
            del tokens[i:]
            return token
        replay.popleft()
    return None


def _fail_replay(rec: TaskRecord, token: Journaled, book: TaskBook) -> None:
    """Fail loudly instead of continuing a different stream."""
    book.metrics.on_determinism_failure(rec.task.pool_id)
    book.finish(
        rec, TaskState.FAILED, ErrorCode.DAEMON_RESTART,
        f"resumed after a daemon restart, the engine diverged at token {token[0]} from "
        "what was sent before it (same engine, same seed should repeat it)",
    )  # fmt: skip
