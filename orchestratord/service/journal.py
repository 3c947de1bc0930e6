"""What the daemon journals about a task, as store rows — and back.

A task is journaled three times at most, plus an output chunk per `STRICT_CHECKPOINT`
tokens for strict tasks: at admission (`spec`: everything needed to rebuild the task and
its engine request), when its first token is about to reach a client (`streamed`, with its
`started` event: from then on a restart cannot silently rerun it), and at its end
(`result`, carrying the output not journaled yet). A task nobody watched — a batch item, a
non-streamed completion — is journaled twice. Tokens are never journaled one by one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from orchestrator_core.model import Determinism, Placement, PlacementMode, Priority, Task
from orchestratord.api_models import EndEvent, ErrorEnvelope, StartedEvent
from orchestratord.service.output import from_columns
from orchestratord.store import TaskRow
from worker_adapters.base import ChatMessage, GenerateRequest

if TYPE_CHECKING:
    from orchestratord.service.records import TaskRecord

#: Strict tasks journal their output every this many tokens: a restart resumes them after
#: the last delivered token and checks that the replay matches what was journaled.
STRICT_CHECKPOINT = 64


def unix_ms() -> int:
    return int(time.time() * 1000)


def task_row(rec: TaskRecord, now_ms: float) -> TaskRow:
    """The admission row of `rec` (`now_ms`: the loop clock, to date its deadline)."""
    task, request = rec.task, rec.request
    assert request is not None
    wall = unix_ms()
    deadline = None if task.deadline_ms is None else round(wall + task.deadline_ms - now_ms)
    # enums go in as they are: orjson writes their values
    spec = {
        "model": rec.model, "door": rec.door, "engine": rec.engine,
        "tenant": task.tenant, "priority": task.priority, "session_id": task.session_id,
        "deadline_unix_ms": deadline, "determinism": task.determinism,
        "placement": [task.placement.mode, task.placement.replica_id],
        "prompt_tokens": task.prompt_tokens, "max_tokens": task.max_tokens,
        "correlation_id": rec.correlation_id, "created": rec.created, "seed": rec.seed,
        "cancel_when_abandoned": rec.cancel_when_abandoned,
        "request": {
            "prompt": request.prompt, "max_tokens": request.max_tokens, "seed": request.seed,
            "temperature": request.temperature, "top_p": request.top_p,
            "top_k": request.top_k, "stop": list(request.stop),
            "cache_prompt": request.cache_prompt, "priority": request.priority,
            "messages": [[m.role, m.content] for m in request.messages],
        },
    }  # fmt: skip
    batch_id, line = rec.batch or (None, None)
    row = orjson.dumps(spec).decode()
    return TaskRow(task.id, task.pool_id, task.state.value, row, wall, batch_id, line)


def output_chunk(rec: TaskRecord, start: int) -> str:
    """Output entries from `start` on, as columns (`Output.columns`: one JSON object, no
    array per token)."""
    return orjson.dumps(rec.output.columns(start)).decode()


def started(rec: TaskRecord) -> str:
    """The task's `started` event, journaled when its tokens first reach a client."""
    event = rec.started_event
    assert event is not None, "a task streams once started"
    return event.model_dump_json()


def result(rec: TaskRecord, end: EndEvent | None, *, with_started: bool) -> str:
    """How `rec` ended, with what its stream needs to be rebuilt after a restart: the output
    no chunk holds (`output`, columns), and its `started` event, `with_started` when no
    `streamed` write carried it (no client saw a token)."""
    started = rec.started_event if with_started else None
    tail = rec.output.columns(rec.journaled) if len(rec.output) > rec.journaled else None
    return orjson.dumps({
        "started": started.model_dump() if started else None,
        "end": end.model_dump() if end else None,
        "error": rec.error.model_dump(exclude_none=True) if rec.error else None,
        "replica_id": rec.replica_id, "engine": rec.engine, "tokens_out": rec.tokens_out,
        "tokens_in": rec.tokens_in, "finish_reason": rec.finish_reason,
        "output_truncated": rec.output_truncated, "output": tail,
    }).decode()  # fmt: skip


# -- reading back ------------------------------------------------------------------


def task_of(row: TaskRow, spec: dict[str, Any], deadline_ms: float | None) -> Task:
    mode, replica_id = spec["placement"]
    return Task(
        id=row.id, pool_id=row.pool_id, priority=Priority(spec["priority"]),
        tenant=spec["tenant"], session_id=spec["session_id"], deadline_ms=deadline_ms,
        determinism=Determinism(spec["determinism"]), prompt_tokens=spec["prompt_tokens"],
        max_tokens=spec["max_tokens"], placement=Placement(PlacementMode(mode), replica_id),
    )  # fmt: skip


def request_of(spec: dict[str, Any]) -> GenerateRequest:
    r = spec["request"]
    return GenerateRequest(
        prompt=r["prompt"], max_tokens=r["max_tokens"], seed=r["seed"],
        temperature=r["temperature"], top_p=r["top_p"], top_k=r["top_k"],
        stop=tuple(r["stop"]), cache_prompt=r["cache_prompt"], priority=r["priority"],
        messages=tuple(ChatMessage(role, content) for role, content in r["messages"]),
    )  # fmt: skip


#: One journaled output entry: (token index, text, the engine's token ids).
Journaled = tuple[int, str, tuple[int, ...]]


def tokens_of(chunks: list[str], outcome: dict[str, Any] | None = None) -> list[Journaled]:
    """The journaled output, in order: the chunks, then what the task's result (`outcome`,
    once it ended) carries. A chunk is columns (`Output.columns`), or — as journals written
    before 2026-11-23 hold them — `[[token index, text, [ids]], ...]`; a result written
    by an earlier version carries no output (its last chunk held everything)."""
    tokens: list[Journaled] = []
    for chunk in chunks:
        data = orjson.loads(chunk)
        if isinstance(data, dict):
            tokens.extend(from_columns(data))
        else:
            tokens.extend((i, text, tuple(ids)) for i, text, ids in data)
    tail = outcome.get("output") if outcome is not None else None
    if tail is not None:
        tokens.extend(from_columns(tail))
    return tokens


def started_of(started: str | dict[str, Any] | None) -> StartedEvent | None:
    if started is None:
        return None
    return StartedEvent.model_validate(
        orjson.loads(started) if isinstance(started, str) else started
    )


def ending_of(outcome: dict[str, Any]) -> EndEvent | ErrorEnvelope | None:
    """The terminal event a finished task's stream ends with."""
    if outcome["end"]:
        return EndEvent.model_validate(outcome["end"])
    if outcome["error"]:
        return ErrorEnvelope.model_validate(outcome["error"])
    return None
