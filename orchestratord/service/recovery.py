"""Recovery on start: the journaled tasks come back as the daemon left them.

- queued tasks, and running ones that had streamed nothing, return to their pools' queues
  in admission order, with their ids, priorities, tenants and deadlines;
- running tasks that had streamed tokens end with the retriable `DAEMON_RESTART` — except
  strict tasks with a seed, which run again from the start: their stream is rebuilt event
  for event (same engine, same seed, same tokens), so a client resumes it with
  `Last-Event-ID` exactly after the last event it saw, and the rerun must reproduce the
  journaled tokens or fail loudly;
- finished tasks keep their status, output and stream for the rest of their retention;
- a live task whose stream was its request's answer lost its client with the old process:
  it is canceled unless a reader comes back within `abandon_grace_s` (the orchestrator's
  rule for a client that leaves) — a non-streamed completion's client never learned its
  id, and OpenAI's SDKs send such a request again as a new one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Determinism, TaskState
from orchestratord.api_models import EndEvent
from orchestratord.service import journal
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.records import Door, TaskRecord
from orchestratord.service.refusal import Refusal
from orchestratord.service.streams import StreamLimits
from orchestratord.service.tasks import TaskBook
from orchestratord.store import Durable, StoredTask

log = structlog.get_logger("orchestratord")


@dataclass(slots=True)
class Recovered:
    """What came back, for the start-up log line."""

    requeued: int = 0
    resumed: int = 0
    restarted: int = 0
    finished: int = 0
    expired: int = 0
    #: Live Batch API items, back in their queues (their batches count them).
    batch_items: list[TaskRecord] = field(default_factory=list)
    #: Live tasks whose clients left with the old process (`cancel_when_abandoned`).
    unread: list[TaskRecord] = field(default_factory=list)


def recover(
    stored: list[StoredTask],
    pools: Mapping[str, PoolDispatcher],
    book: TaskBook,
    now_ms: Callable[[], float],
    *,
    retention_s: float,
    streams: StreamLimits,
) -> Recovered:
    """Bring the journaled tasks back (`stored` is in admission order)."""
    done = Recovered()
    now, wall = now_ms(), time.time() * 1000

    def loop_ms(unix_ms: float) -> float:  # a wall-clock instant on the loop's clock
        return now - (wall - unix_ms)

    ended = sorted((s for s in stored if s.result is not None), key=lambda s: s.ended_unix_ms or 0)
    for s in ended:
        assert s.ended_unix_ms is not None
        if wall - s.ended_unix_ms >= retention_s * 1000:
            book.forget_stored(s.row.id)
            done.expired += 1
            continue
        rec = _record(s, streams, loop_ms)
        _replay_ended(rec, s)
        book.restore(rec, loop_ms(s.ended_unix_ms))
        done.finished += 1
    for s in stored:
        if s.result is not None:
            continue
        rec = _record(s, streams, loop_ms)
        pool = pools.get(rec.task.pool_id)
        strict = rec.task.determinism is Determinism.STRICT and rec.seed is not None
        if pool is None:
            book.add(rec, recovered=True)
            why = f"pool {rec.task.pool_id!r} is no longer configured"
            book.finish(rec, TaskState.CANCELED, ErrorCode.POOL_UNAVAILABLE, why)
        elif s.streamed and not strict and rec.batch is None:
            rec.task.state = TaskState.RUNNING
            _replay_output(rec, s)
            rec.stream.partial = True
            last = rec.output.last_index
            rec.tokens_out = 0 if last is None else last + 1
            book.add(rec, recovered=True)
            book.finish(
                rec, TaskState.FAILED, ErrorCode.DAEMON_RESTART,
                "the daemon restarted while this task streamed; submit it again",
            )  # fmt: skip
            done.restarted += 1
        else:
            if rec.batch is not None:  # nobody watched its stream: it simply runs again
                done.batch_items.append(rec)
                done.requeued += 1
            elif s.streamed:
                # its rerun journals the same chunks again, from chunk 0, in order
                rec.replay = deque(journal.tokens_of(s.output))
                rec.stream.partial = True  # should its rerun fail, readers still hear it
                done.resumed += 1
            else:
                done.requeued += 1
            if rec.request is not None:
                rec.task.prefix = pool.placement.blocks(rec.request)
            try:
                pool.admit(rec, recovered=True)
            except Refusal as refused:  # the queue is smaller than it was
                book.add(rec, recovered=True)
                book.finish(rec, TaskState.CANCELED, refused.code, f"after a restart: {refused}")
                continue
            if rec.cancel_when_abandoned:
                done.unread.append(rec)
    log.info(
        "recovered tasks", requeued=done.requeued, resumed=done.resumed,
        restarted=done.restarted, finished=done.finished, expired=done.expired,
    )  # fmt: skip
    return done


def _record(s: StoredTask, streams: StreamLimits, loop_ms: Callable[[float], float]) -> TaskRecord:
    row = s.row
    spec: dict[str, Any] = orjson.loads(row.spec)
    deadline = spec["deadline_unix_ms"]
    task = journal.task_of(row, spec, None if deadline is None else loop_ms(deadline))
    rec = TaskRecord(
        task=task, request=journal.request_of(spec), model=spec["model"],
        door=Door(spec["door"]), engine=spec["engine"],
        stream=streams.new(), correlation_id=spec["correlation_id"],
        admitted_at=loop_ms(row.admitted_unix_ms), created=spec["created"], seed=spec["seed"],
        batch=None if row.batch_id is None else (row.batch_id, row.batch_line or 0),
        cancel_when_abandoned=spec.get("cancel_when_abandoned", False),  # (older rows lack it)
    )  # fmt: skip
    if s.streamed or s.result is not None:  # the journal knows: a reader needs no write
        rec.announced = Durable(loop=asyncio.get_running_loop())
        rec.announced.set_result(None)
    return rec


def _replay_ended(rec: TaskRecord, s: StoredTask) -> None:
    """Give a finished task its state, result and stream again."""
    outcome: dict[str, Any] = orjson.loads(s.result or "{}")
    rec.task.state = TaskState(s.row.state)
    rec.request = None
    rec.replica_id, rec.engine = outcome["replica_id"], outcome["engine"]
    rec.tokens_out, rec.tokens_in = outcome["tokens_out"], outcome["tokens_in"]
    rec.finish_reason, rec.output_truncated = outcome["finish_reason"], outcome["output_truncated"]
    _replay_output(rec, s, outcome)
    ending = journal.ending_of(outcome)
    # what a reader saw may go past the journaled tokens (a stream cut by a restart, or
    # past the output cap): it still hears the ending
    rec.stream.partial = rec.output_truncated or not isinstance(ending, EndEvent)
    if isinstance(ending, EndEvent):
        rec.stream.end(ending)
    elif ending is not None:
        rec.error = ending
        rec.stream.error(ending)


def _replay_output(rec: TaskRecord, s: StoredTask, outcome: dict[str, Any] | None = None) -> None:
    """The journaled part of a task's stream (`outcome`: its result, once it ended):
    `started`, then its journaled tokens, with the event ids they had (a resume after them
    still finds its place)."""
    rec.started_event = journal.started_of((outcome or {}).get("started") or s.started)
    if rec.started_event is not None:
        rec.stream.started(rec.started_event)
    entries = journal.tokens_of(s.output, outcome)
    rec.output.extend(entries)
    rec.stream.tokens(entries)
    rec.journaled, rec.chunks = len(rec.output), len(s.output)
