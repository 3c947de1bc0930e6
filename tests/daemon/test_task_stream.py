"""A task's event stream as its readers see it (`TaskStream.read`). A reader that waits
for the journal (a gate): the first tokens wait for the gate, and go out with whatever
arrived while it was shut — or, when it stays shut, not at all. A reader that follows (a
push): once caught up, it is handed each token in the call that appends it, and woken only
for what it does not take."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator_core.errors import ErrorCode
from orchestratord.api_models import EndEvent, ErrorEnvelope, StartedEvent
from orchestratord.service.streams import END, ERROR, STARTED, TOKEN, Event, StreamGap, TaskStream

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
    stream, gate = TaskStream(max_events=16, max_text=1 << 20), Gate()
    reader = asyncio.create_task(_read_all(stream, gate))
    stream.started(STARTED_EVENT)
    stream.tokens([(0, "a", ())])
    await gate.entered.wait()
    stream.tokens([(1, "b", ())])
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
    stream, gate = TaskStream(max_events=16, max_text=1 << 20), Gate()
    stream.started(STARTED_EVENT)
    events = stream.read(gate=gate)
    first = await anext(events)
    assert [event[0] for event in first] == [STARTED] and not gate.entered.is_set()
    stream.tokens([(0, "a", ())])
    reading = asyncio.ensure_future(anext(events))
    await gate.entered.wait()
    gate.verdict.set_result(True)
    assert [event[0] for event in await reading] == [TOKEN]
    await events.aclose()


# -- followers ---------------------------------------------------------------------------

END_EVENT = EndEvent(tokens_out=0, decode_ms=0, finish_reason="stop")


class Push:
    """A follower's push: takes the token batches whose first token `takes` accepts, in
    order, and keeps them (`calls`: one list per batch offered)."""

    def __init__(self, takes: Callable[[Event], bool] = lambda event: True) -> None:
        self.takes = takes
        self.taken: list[Event] = []
        self.calls: list[list[Event]] = []

    def __call__(self, events: list[Event]) -> bool:
        self.calls.append(events)
        if not self.takes(events[0]):
            return False
        self.taken.extend(events)
        return True


class ByHand:
    """A reader stepped by hand, so a test knows where it stands: `step()` runs it until it
    yields a batch (returned) or waits for news (None, also while no news came; `woken`
    says whether some did)."""

    def __init__(self, events: AsyncIterator[list[Event]]) -> None:
        self._events = events
        self._step: Any = None
        self._waiting_on: asyncio.Future[bool] | None = None

    @property
    def woken(self) -> bool:
        return self._waiting_on is not None and self._waiting_on.done()

    async def news(self) -> None:
        """Wait (on the loop) until the reader is woken."""
        assert self._waiting_on is not None
        await asyncio.wait([self._waiting_on])

    def step(self) -> list[Event] | None:
        if self._waiting_on is not None and not self._waiting_on.done():
            return None
        if self._step is None:
            self._step = self._events.__anext__()
        try:
            self._waiting_on = self._step.send(None)
        except StopIteration as yielded:
            self._step = self._waiting_on = None
            return list(yielded.value)
        except StopAsyncIteration:  # the stream ended
            self._step = self._waiting_on = None
        return None

    async def close(self) -> None:
        """Stop the reader where it stands (as a cancel would), then close it."""
        if self._step is not None:
            with contextlib.suppress(GeneratorExit):
                self._step.throw(GeneratorExit)
            self._step = None
        await self._events.aclose()


def _kinds(batch: list[Event] | None) -> list[int]:
    return [event[0] for event in batch or ()]


async def test_a_caught_up_reader_is_handed_each_token_in_the_call_that_appends_it():
    """OC-CTRL-2031: no wake-up per token — the reader is handed each token where it is
    appended (an engine's read callback), never again in a batch; its ending wakes it."""
    stream, push = TaskStream(max_events=16, max_text=1 << 20), Push()
    stream.started(STARTED_EVENT)
    reader = ByHand(stream.read(push=push))
    assert _kinds(reader.step()) == [STARTED]
    assert reader.step() is None  # caught up: it follows
    stream.tokens([(0, "a", ())])
    assert [event[3] for event in push.taken] == ["a"] and not reader.woken
    stream.tokens([(1, "b", ())])
    assert [event[3] for event in push.taken] == ["a", "b"] and not reader.woken
    stream.end(END_EVENT)
    assert reader.woken and _kinds(reader.step()) == [END]
    await reader.close()


async def test_a_reads_tokens_are_handed_to_a_follower_in_one_call():
    """OC-CTRL-2031: the tokens one engine read brought reach a caught-up reader together,
    in one call of its push, with their own ids, in order."""
    stream, push = TaskStream(max_events=16, max_text=1 << 20), Push()
    stream.started(STARTED_EVENT)
    reader = ByHand(stream.read(push=push))
    reader.step()
    assert reader.step() is None
    stream.tokens([(0, "a", ()), (1, "b", (7,)), (3, "cd", (8, 9))])
    assert [[event[1:] for event in call] for call in push.calls] == [
        [(1, 0, "a", ()), (2, 1, "b", (7,)), (3, 3, "cd", (8, 9))]
    ]
    assert not reader.woken and stream.next_id == 4
    await reader.close()


async def test_a_read_larger_than_what_is_retained_keeps_the_latest_and_reports_the_gap():
    """OC-CTRL-2009: one append of more tokens than the stream retains keeps the last
    `max_events` events, and a resume from before them is told where they begin."""
    stream = TaskStream(max_events=4, max_text=1 << 20)
    stream.started(STARTED_EVENT)
    stream.tokens([(i, str(i), ()) for i in range(6)])  # events 1..6; 3..6 are kept
    stream.check_resume(2)
    for before in (1, None):  # a resume from before them, a reader from the start
        with pytest.raises(StreamGap) as gap:
            stream.check_resume(before)
        assert gap.value.first_retained == 3
    batches = stream.read(after=2)
    assert [event[1] for event in await anext(batches)] == [3, 4, 5, 6]
    await batches.aclose()


async def test_the_retained_events_hold_at_most_the_text_bytes_whatever_a_token_weighs():
    """OC-LOAD-1211: the buffer was bounded by events alone — 4,096 tokens of an engine
    that sends 256 KiB each would all have been kept. Text that is not ASCII counts four
    bytes a character (what CPython may store it in); a token larger than the bound is
    still kept, alone."""
    stream = TaskStream(max_events=16, max_text=1000)
    stream.started(STARTED_EVENT)
    stream.tokens([(i, "x" * 300, ()) for i in range(3)])  # events 1..3: 900 bytes
    assert stream.text_bytes == 900
    stream.check_resume(None)
    stream.tokens([(3, "日本" * 50, ())])  # 100 characters, 400 bytes: one "x" must go
    assert stream.text_bytes == 300 + 300 + 400
    stream.check_resume(1)
    with pytest.raises(StreamGap) as gap:
        stream.check_resume(0)
    assert gap.value.first_retained == 2  # `started` and the first token are gone
    stream.tokens([(4, "y" * 5000, ())])
    assert stream.text_bytes == 5000 and stream.next_id == 6
    batches = stream.read(after=4)
    assert [event[1] for event in await anext(batches)] == [5]
    await batches.aclose()


async def test_a_token_the_follower_declines_comes_in_its_next_batch_with_all_after_it():
    """OC-CTRL-2031: a declined token (its client has not taken the last write) is not
    lost: it and what follows it come in the next batch; caught up again, the reader
    follows again."""
    stream, push = (
        TaskStream(max_events=16, max_text=1 << 20),
        Push(takes=lambda event: event[3] != "b"),
    )
    stream.started(STARTED_EVENT)
    reader = ByHand(stream.read(push=push))
    reader.step()
    assert reader.step() is None
    stream.tokens([(0, "a", ())])
    stream.tokens([(1, "b", ())])  # declined: the reader is woken for it
    stream.tokens([(2, "c", ())])  # no longer followed: it waits in the stream for the reader
    assert reader.woken and [event[3] for event in push.taken] == ["a"]
    assert [event[3] for event in reader.step() or ()] == ["b", "c"]
    assert reader.step() is None
    stream.tokens([(3, "d", ())])
    assert [event[3] for event in push.taken] == ["a", "d"] and not reader.woken
    await reader.close()


async def test_a_reader_waiting_for_its_gate_is_not_handed_tokens():
    """OC-STORE-1009, OC-CTRL-2031: tokens reach a follower only past the journal's gate."""
    stream, gate, push = TaskStream(max_events=16, max_text=1 << 20), Gate(), Push()
    stream.started(STARTED_EVENT)
    events = stream.read(gate=gate, push=push)
    assert _kinds(await anext(events)) == [STARTED]
    reading = asyncio.ensure_future(anext(events))
    stream.tokens([(0, "a", ())])
    await gate.entered.wait()
    stream.tokens([(1, "b", ())])
    assert push.taken == []
    gate.verdict.set_result(True)
    assert [event[3] for event in await reading] == ["a", "b"]
    await events.aclose()


async def test_a_follower_the_heartbeat_woke_follows_again_and_is_handed_each_token_once():
    """OC-CTRL-2031: an idle follower gets its keep-alive cue (an empty batch) and then
    follows as before, once."""
    stream, push = TaskStream(max_events=16, max_text=1 << 20), Push()
    stream.started(STARTED_EVENT)
    reader = ByHand(stream.read(idle_s=0.01, push=push))
    reader.step()
    assert reader.step() is None
    await reader.news()  # the heartbeat's tick
    assert reader.step() == []
    assert reader.step() is None
    stream.tokens([(0, "a", ())])
    assert [event[3] for event in push.taken] == ["a"] and not reader.woken
    await reader.close()


@given(
    st.lists(st.tuples(st.integers(min_value=1, max_value=5), st.booleans()), max_size=30),
    st.integers(min_value=1, max_value=8),
)
def test_tokens_reach_a_follower_exactly_once_in_order_however_it_takes_them(reads, window):
    """OC-CTRL-2031: taken by the push or read in a batch, every event reaches the reader
    once, in order — however many tokens each engine read brings, whichever reads it
    declines and however often it catches up."""

    async def scenario() -> None:
        total = sum(size for size, _ in reads)
        stream = TaskStream(max_events=total + 2, max_text=1 << 20)
        decisions = iter(take for _, take in reads)
        push = Push(takes=lambda event: next(decisions, True))
        reader = ByHand(stream.read(push=push))
        delivered = push.taken  # what the push takes, and every batch, as they come

        def read_until_waiting() -> None:
            while (batch := reader.step()) is not None:
                delivered.extend(batch)

        stream.started(STARTED_EVENT)
        index = 0
        for i, (size, _) in enumerate(reads):
            if i % window == 0:
                read_until_waiting()
            stream.tokens([(index + k, str(index + k), ()) for k in range(size)])
            index += size
        stream.end(END_EVENT)
        read_until_waiting()
        tokens = [event[1] for event in delivered if event[0] == TOKEN]
        assert tokens == list(range(1, total + 1))
        assert _kinds(delivered)[0] == STARTED and _kinds(delivered)[-1] == END
        await reader.close()

    asyncio.run(scenario())
