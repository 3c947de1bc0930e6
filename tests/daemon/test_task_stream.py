"""A task's event stream as a reader that waits for the journal sees it (`TaskStream.read`
with a gate): the first tokens wait for the gate, and go out with whatever arrived while
it was shut — or, when it stays shut, not at all."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator_core.errors import ErrorCode
from orchestratord.api_models import EndEvent, ErrorEnvelope, StartedEvent
from orchestratord.service.streams import END, ERROR, STARTED, TOKEN, Event, TaskStream

STARTED_EVENT = StartedEvent(
    task_id="t", queue_position=0, predicted_start_ms=0, pool_id="p", replica_id="r",
    engine="mock", engine_version="mock-1",
)  # fmt: skip


class Gate:
    """A journal write a reader waits on: entered, then opened (or not) by the test."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def __call__(self) -> bool:
        self.entered.set()
        return await self.verdict


async def _read_all(stream: TaskStream, gate: Gate) -> list[list[Event]]:
    return [batch async for batch in stream.read(gate=gate)]


async def _gate_shut_on_a_second_token() -> tuple[TaskStream, Gate, asyncio.Task[Any]]:
    """A reader waiting at the gate with `started` and token "a"; "b" came meanwhile."""
    stream, gate = TaskStream(max_events=16), Gate()
    reader = asyncio.create_task(_read_all(stream, gate))
    stream.started(STARTED_EVENT)
    stream.token(0, "a")
    await gate.entered.wait()
    stream.token(1, "b")
    return stream, gate, reader


async def test_the_first_tokens_wait_for_the_gate_and_take_what_came_meanwhile_along():
    """OC-STORE-1009: nothing of a token batch is read before the gate opens; then the
    batch holds what arrived while it was shut too (here the ending: one write)."""
    stream, gate, reader = await _gate_shut_on_a_second_token()
    stream.end(EndEvent(tokens_out=2, decode_ms=0, finish_reason="length"))
    gate.verdict.set_result(True)
    batches = await reader
    assert [[event[0] for event in batch] for batch in batches] == [[STARTED, TOKEN, TOKEN, END]]
    assert [event[3] for event in batches[0] if event[0] == TOKEN] == ["a", "b"]


async def test_tokens_the_gate_keeps_shut_are_never_read_and_the_ending_still_is():
    """OC-STORE-1009: the journal could not say a client saw them, so no client does; the
    reader still gets the task's ending (why)."""
    stream, gate, reader = await _gate_shut_on_a_second_token()
    stream.error(ErrorEnvelope.of(ErrorCode.STORE_UNAVAILABLE, "the disk is full"))
    gate.verdict.set_result(False)
    batches = await reader
    assert [[event[0] for event in batch] for batch in batches] == [[STARTED, ERROR]]


async def test_a_batch_without_tokens_does_not_wait_for_the_gate():
    """OC-STORE-1009: `started` alone (a task still waiting for its first token) reaches
    the reader at once; the gate is for tokens."""
    stream, gate = TaskStream(max_events=16), Gate()
    stream.started(STARTED_EVENT)
    events = stream.read(gate=gate)
    first = await anext(events)
    assert [event[0] for event in first] == [STARTED] and not gate.entered.is_set()
    stream.token(0, "a")
    reading = asyncio.ensure_future(anext(events))
    await gate.entered.wait()
    gate.verdict.set_result(True)
    assert [event[0] for event in await reading] == [TOKEN]
    await events.aclose()
