"""One accepted task as the daemon tracks it (`TaskRecord`), from admission until it is
forgotten, and the names a task carries (its door, its session)."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator_core.model import Task
from orchestratord.api_models import ErrorEnvelope, StartedEvent
from orchestratord.service import journal
from orchestratord.service.output import Output
from orchestratord.service.streams import TaskStream
from orchestratord.store import Durable
from orchestratord.telemetry import tracing
from worker_adapters.base import End, FinishReason, GenerateRequest


class Door(StrEnum):
    """The API a task came through."""

    NATIVE = "native"
    OPENAI_CHAT = "openai-chat"
    OPENAI_COMPLETION = "openai-completion"


@dataclass(eq=False, slots=True)
class TaskRecord:
    """One accepted task as the daemon tracks it, from admission until it is forgotten."""

    task: Task
    #: What the engine is asked, built once at admission; dropped when the task ends.
    request: GenerateRequest | None
    model: str
    #: Which API the task came through (how its stream renders by default).
    door: Door
    #: The pool's engine until a replica takes the task, then that replica's.
    engine: str
    stream: TaskStream
    correlation_id: str
    admitted_at: float
    #: Wall-clock admission time, unix seconds (OpenAI's `created`).
    created: int = 0
    seed: int | None = None
    queue_position: int = 0
    predicted_start_ms: int = 0
    replica_id: str | None = None
    tokens_out: int = 0
    tokens_in: int | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    ended_at: float | None = None
    finish_reason: FinishReason | None = None
    error: ErrorEnvelope | None = None
    #: The text kept for its status, with each token's index and ids (to rebuild the
    #: stream, byte for byte, after a restart); at most `server.max_output_bytes`.
    output: Output = field(default_factory=Output)
    output_truncated: bool = False
    started_event: StartedEvent | None = None
    #: Resolves once the task is durable (None: durability is off, or it was recovered).
    durable: Durable | None = None
    #: Output entries journaled so far, in how many chunks, and the entry count at which
    #: the next checkpoint is due (never, except for strict tasks in a durable store).
    journaled: int = 0
    chunks: int = 0
    checkpoint_at: int = sys.maxsize
    #: Resolves once the journal says its tokens may reach a client — it was streamed,
    #: with its `started` event, or it ended before any reader came: from then on a
    #: restart never silently runs it again.
    announced: Durable | None = None
    #: The task's ending, held back until its journal write (the future) is done.
    unpublished: tuple[Durable, Callable[[], None]] | None = None
    #: A strict task resumed after a restart: the `(token index, text, ids)` it had
    #: journaled, which its rerun must reproduce.
    replay: deque[journal.Journaled] | None = None
    #: A Batch API item: (batch id, line of the batch's input file).
    batch: tuple[str, int] | None = None
    #: The coroutine relaying the engine's stream (its owner is the pool's dispatcher).
    runner: asyncio.Task[Any] | None = None
    #: Stream readers attached now.
    readers: int = 0
    #: The task's stream is its request's answer (one-request and OpenAI streaming): when
    #: its last reader leaves before the end, the task is canceled after a grace period.
    cancel_when_abandoned: bool = False
    #: Bytes the memory budget charges it: its reservation while live (grown once its
    #: tokens' text passes what that assumed: `text_charged`), then what it holds.
    footprint: int = 0
    text_charged: int = 0
    #: Its open trace spans (None: tracing is off).
    spans: tracing.TaskSpans | None = None
    #: Token fairness: output tokens charged to its tenant so far.
    tokens_charged: int = 0
    engine_end: End | None = None  # the engine's last word (counts, prefill), once it ended

    @property
    def ended(self) -> bool:
        return self.ended_at is not None


def session_key(tenant: str, session_id: str) -> str:
    """Sessions are named within a tenant (which cannot contain `|`: no ambiguity)."""
    return f"{tenant}|{session_id}"


def session_name(key: str | None) -> str | None:
    """The client's name of a session `session_key` made."""
    return None if key is None else key.partition("|")[2]


def request_bytes(request: GenerateRequest) -> int:
    """The text an engine request carries, in UTF-8 bytes."""
    return len(request.prompt.encode()) + sum(len(m.content.encode()) for m in request.messages)
