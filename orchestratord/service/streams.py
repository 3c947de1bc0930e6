"""One task's event stream: events kept once, read by any number of readers, each of which
renders them in its own wire format (native SSE, OpenAI chunks: `orchestratord.api.sse`).

An event is a plain tuple, `(kind, id, ...)`, cheap to make on the hot path:
`(STARTED, id, StartedEvent)`, `(TOKEN, id, index, text, ids)`, `(END, id, EndEvent)`,
`(ERROR, id, ErrorEnvelope)`. Ids count from 0 and are what `Last-Event-ID` resumes after.

Memory is bounded per task in bytes, whatever the output's length and its tokens' size:
the latest events are kept for resume, at most `max_events` of them holding at most
`max_text` bytes of token text (`text_size`); a reader that falls further behind is told
so (`StreamGap`) instead of silently losing tokens. Once a stream has ended, its token
events can be served from the task's output buffer instead (`compact`): a finished task
then holds no object per token.
A reader is woken once for everything that arrived since it last ran and gets it in one
batch; waking costs no timer work per event (the idle heartbeat is one periodic timer per
reader). A reader that has caught up may instead follow the stream (`push`): the tokens of each
engine read are handed to it in the appender's own call (the engine connection's read
callback), together, with no wake-up and no task step per read; it is woken only for what it
does not take.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from orchestratord.api_models import EndEvent, ErrorEnvelope, StartedEvent
from orchestratord.service.output import Entry, Output

STARTED, TOKEN, END, ERROR = 0, 1, 2, 3

#: (kind, id, ...) — see the module docstring.
Event = tuple[Any, ...]


class StreamGap(Exception):
    """The reader asked for events that are no longer retained."""

    def __init__(self, first_retained: int) -> None:
        super().__init__(
            f"events before id {first_retained} are no longer retained (a stream keeps its "
            "latest `stream_buffer_events`, holding at most `stream_buffer_bytes` of text); "
            f"Last-Event-ID: {first_retained - 1} reads on from the oldest one kept"
        )
        self.first_retained = first_retained


class _FromOutput:
    """A finished stream's retained events, made on demand: `started`, one token per output
    entry, the ending — the same tuples the stream had held."""

    __slots__ = ("_ending", "_first", "_output", "_started")

    def __init__(self, started: Event, output: Output, ending: Event, first: int) -> None:
        self._started, self._output, self._ending, self._first = started, output, ending, first

    def __len__(self) -> int:
        return len(self._output) + 2 - self._first

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, i: int) -> Event:
        event_id = self._first + (i if i >= 0 else len(self) + i)
        if event_id == 0:
            return self._started
        if event_id == len(self._output) + 1:
            return self._ending
        index, text, ids = self._output.entry(event_id - 1)
        return (TOKEN, event_id, index, text, ids)


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """What each task's stream keeps for resume (`server.stream_buffer_events` and
    `server.stream_buffer_bytes`)."""

    events: int
    text_bytes: int

    def new(self) -> TaskStream:
        return TaskStream(self.events, self.text_bytes)


def text_size(text: str) -> int:
    """What a token's text costs to keep, in bytes, at most: CPython stores ASCII in a byte
    a character and other text in up to four (`isascii` is a flag read, not a scan)."""
    return len(text) if text.isascii() else 4 * len(text)


class TaskStream:
    __slots__ = (
        "_closed", "_events", "_first", "_followers", "_max_events", "_max_text", "_next",
        "_waiters", "partial", "text_bytes",
    )  # fmt: skip

    def __init__(self, max_events: int, max_text: int) -> None:
        self._events: deque[Event] | _FromOutput = deque()
        self._max_events, self._max_text = max_events, max_text
        #: Bytes of token text the kept events hold (`text_size`), at most `max_text`
        #: (or one event's, when a single token is larger).
        self.text_bytes = 0
        self._first = 0  # id of _events[0]
        self._next = 0  # id the next event gets
        self._closed = False
        #: One future per waiting reader; resolved True when there is news.
        self._waiters: list[asyncio.Future[bool]] = []
        #: Caught-up readers that take new events as they come (`read(push=...)`), all of
        #: one append at once; one that declines them is dropped from here and woken (its
        #: own waiter).
        self._followers: list[Callable[[list[Event]], bool]] = []
        #: Rebuilt after a restart from what was journaled, which may be less than its
        #: readers saw: a reader resuming past its end still gets its ending.
        self.partial = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def next_id(self) -> int:
        """The id the next event will get (so far, `next_id - 1` events were sent)."""
        return self._next

    def started(self, event: StartedEvent) -> None:
        self._extend([(STARTED, self._next, event)])

    def tokens(self, entries: list[Entry]) -> None:
        """The hot path, once per engine read: a tuple per token, all of them handed to a
        follower or waking a reader at once."""
        if not entries:
            return
        first = self._next
        for _, text, _ in entries:
            self.text_bytes += text_size(text)
        self._extend([(TOKEN, first + i, *entry) for i, entry in enumerate(entries)])

    def end(self, event: EndEvent) -> None:
        self._extend([(END, self._next, event)])
        self._close()

    def error(self, envelope: ErrorEnvelope) -> None:
        self._extend([(ERROR, self._next, envelope)])
        self._close()

    def compact(self, output: Output) -> bool:
        """Serve this ended stream's events from `output` and drop its own copies: possible
        when every token event is one output entry (nothing cut by the output cap, not
        rebuilt after a restart). Whether it was done."""
        events = self._events
        if (
            not self._closed or self.partial or not isinstance(events, deque) or not events
            or self._next != len(output) + 2 or events[-1][1] != self._next - 1
        ):  # fmt: skip
            return False
        started = events[0] if self._first == 0 else (STARTED, 0, None)
        if started[0] != STARTED:
            return False
        self._events = _FromOutput(started, output, events[-1], self._first)
        self.text_bytes = 0
        return True

    @property
    def compacted(self) -> bool:
        return isinstance(self._events, _FromOutput)

    def _extend(self, events: list[Event]) -> None:
        """Append `events`: tokens only, or one other event (a follower is offered only
        tokens, and tells them by the first)."""
        if self._closed:
            raise RuntimeError("stream is closed")
        kept = self._events
        assert isinstance(kept, deque)
        kept.extend(events)
        self._next += len(events)
        if len(kept) > self._max_events or self.text_bytes > self._max_text:
            self._trim(kept)
        if self._followers:
            self._followers = [follow for follow in self._followers if follow(events)]
        self._wake()

    def _trim(self, kept: deque[Event]) -> None:
        """Drop the oldest events past either bound (the newest one always stays)."""
        while len(kept) > 1 and (len(kept) > self._max_events or self.text_bytes > self._max_text):
            event = kept.popleft()
            self._first += 1
            if event[0] == TOKEN:
                self.text_bytes -= text_size(event[3])

    def _close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def check_resume(self, after: int | None) -> None:
        """Raise StreamGap if the events after `after` (None: all of them) are no longer
        all retained."""
        if (0 if after is None else after + 1) < self._first:
            raise StreamGap(self._first)

    def _since(self, cursor: int) -> list[Event]:
        if cursor < self._first:
            raise StreamGap(self._first)
        events = self._events
        start = cursor - self._first
        if start == len(events) - 1:
            return [events[start]]
        return [events[i] for i in range(start, len(events))]

    async def read(
        self,
        after: int | None = None,
        *,
        idle_s: float | None = None,
        gate: Callable[[], Awaitable[bool]] | None = None,
        push: Callable[[list[Event]], bool] | None = None,
    ) -> AsyncIterator[list[Event]]:
        """Yield the events with id > `after` (all when None) as they arrive, in batches,
        until the stream closes; with `idle_s`, also an empty batch whenever a period of
        `idle_s` passed without news (the caller's cue for a keep-alive). With `gate`, the
        first batch that holds a token waits for `gate()` and then also holds what
        arrived meanwhile (often the ending: then a reader sends all of it at once); if
        `gate()` says False, that batch comes without its tokens. With `push`, once past
        the gate and caught up, the tokens of each append are offered to `push(events)` at
        once, from the appender's call: True, they were taken (they never come in a
        batch); False, they come in the next batch instead, as does every event after them
        until the reader has caught up again. Only tokens are offered: any other event (an
        ending, a retry's `started`) wakes the reader. Raises StreamGap when the requested
        events were dropped from the buffer."""
        cursor = start = 0 if after is None else after + 1
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] | None = None
        news = False  # since the last tick
        timer: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal timer, news
            if not news and waiter is not None and not waiter.done():
                if waiter in self._waiters:  # (a follower's waiter is its own)
                    self._waiters.remove(waiter)
                waiter.set_result(False)
            news = False
            timer = loop.call_later(idle_s or 0, tick)

        def follow(events: list[Event]) -> bool:
            nonlocal cursor, news
            assert push is not None and waiter is not None
            first = events[0]
            # (a reader resuming past a rebuilt stream's end has seen the next ones already)
            if first[0] == TOKEN and first[1] == cursor and push(events):
                cursor += len(events)
                news = True
                return True
            if not waiter.done():
                waiter.set_result(True)
            return False

        if idle_s:
            timer = loop.call_later(idle_s, tick)
        try:
            while True:
                if cursor < self._next:
                    batch = self._since(cursor)
                    if gate is not None and any(event[0] == TOKEN for event in batch):
                        opened, gate = await gate(), None
                        batch = self._since(cursor)  # with what came while it waited
                        if not opened:  # its tokens stay unsent; the ending says why
                            batch = [event for event in batch if event[0] != TOKEN]
                    cursor = self._next
                    news = True
                    if batch:
                        yield batch
                    continue
                if self._closed:
                    if self.partial and start >= self._next and self._events:
                        yield [self._events[-1]]  # the reader saw more than was journaled
                    return
                waiter = loop.create_future()
                following = push is not None and gate is None
                if following:
                    self._followers.append(follow)
                else:
                    self._waiters.append(waiter)
                try:
                    woken = await waiter
                finally:
                    if following and follow in self._followers:  # (the heartbeat, a cancel)
                        self._followers.remove(follow)
                    waiter = None
                if not woken:
                    yield []
        finally:
            if timer is not None:
                timer.cancel()
