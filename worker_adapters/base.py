"""The one interface every engine adapter implements.

An adapter turns one engine's protocol into the same small vocabulary: capabilities,
readiness, and a stream of `Token` events closed by one `End`. Engine failures are raised
as `AdapterError` carrying a code from the shared taxonomy (`orchestrator_core.errors`):
overload (429, 503, gRPC UNAVAILABLE) becomes one retriable `REPLICA_EXHAUSTED`, a dead
connection `WORKER_RESET`, a stall `DECODE_TIMEOUT`, a rejected request `INVALID_PARAMS`.

Events come two ways, the same events either way: pulled (`stream`, an async iterator) or
pushed (`relay`, each handed to a sink as it arrives — HTTP adapters call the sink from the
engine connection's own callback, which saves the daemon's relay a task step per token).

Cancellation is structural: closing the stream's async iterator, a sink declining an event,
or cancelling the task consuming either must release the engine's slot — close the
connection, cancel the gRPC call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

from orchestrator_core.errors import ErrorCode, OrchestratorError

FinishReason = Literal["stop", "length", "canceled"]


class AdapterError(OrchestratorError):
    """An engine failure, classified into the shared taxonomy."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        engine: str,
        retriable: bool | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(code, message, retriable=retriable)
        self.engine = engine
        #: For the operator's log only: what clients must not see (addresses, OS errors).
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation (OpenAI roles: system, developer, user, assistant)."""

    role: str
    content: str


def chat_dicts(messages: Iterable[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What an engine is asked to do, engine-neutral: a `prompt`, or — for engines that
    render conversations with their own chat template — `messages` (the prompt unused)."""

    prompt: str
    max_tokens: int
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    #: Reuse the engine's prompt cache; off for strict determinism.
    cache_prompt: bool = True
    #: Engine-side priority where the engine supports one (vLLM `priority`).
    priority: int | None = None
    #: A conversation for the engine's chat route to template; empty for plain prompts.
    messages: tuple[ChatMessage, ...] = ()
    #: W3C trace context for the engine (HTTP engines get it as the `traceparent` header).
    traceparent: str | None = None
    #: The engine slot to run on, where the engine takes one (llama.cpp `id_slot`): the
    #: slot whose prompt cache probably holds this prompt's prefix.
    slot: int | None = None

    def chat(self) -> list[dict[str, str]]:
        """`messages` as OpenAI-style dicts (every engine's chat route takes these)."""
        return chat_dicts(self.messages)

    def sampling(self) -> dict[str, float | int]:
        """The seed and sampling parameters that were set, under their common names
        (`seed`, `temperature`, `top_p`, `top_k`: llama.cpp, OpenAI and TGI agree)."""
        fields = {
            "seed": self.seed,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }
        return {k: v for k, v in fields.items() if v is not None}


@dataclass(slots=True)
class Token:
    """Generated text; `count` tokens (engines may send several at once). Made per token:
    not frozen, whose `__init__` costs three times as much (0.9 vs 0.3 µs here)."""

    text: str
    count: int = 1
    ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class End:
    finish_reason: FinishReason
    tokens_out: int
    tokens_in: int | None = None
    #: Where the engine reports its prefill: prompt tokens it found in its cache, and the
    #: time it spent on the rest (`prefill_tokens` of them).
    cached_tokens: int | None = None
    prefill_ms: float | None = None
    prefill_tokens: int | None = None


StreamEvent = Token | End

#: Takes a relayed stream's events a read at a time: a non-empty list, in order, an `End`
#: only last. Returns False to stop the stream (the request is then cancelled at the
#: engine). It must not block: it may run inside a connection's callback. A list per read
#: rather than a call per event: under load one read of an engine brings a dozen tokens,
#: and every layer of the relay then runs once for them, not once for each.
EventSink = Callable[[list[StreamEvent]], bool]


@dataclass(frozen=True, slots=True)
class Capabilities:
    engine: str
    engine_version: str
    slots: int
    #: Context tokens one sequence may use.
    ctx_per_slot: int | None
    model: str = ""
    model_digest: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What the engine itself reports, where it does: requests it is processing, and the
    fraction of its KV cache in use."""

    busy: int | None = None
    kv_usage: float | None = None


@runtime_checkable
class WorkerAdapter(Protocol):
    """One engine endpoint (a replica)."""

    engine: str

    async def ready(self) -> bool:
        """Whether the engine has its model loaded and accepts requests."""
        ...

    async def capabilities(self) -> Capabilities:
        """Slots, context, version and model identity (may query the engine)."""
        ...

    def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamEvent, None]:
        """Generate: zero or more `Token`s, then exactly one `End`; or raise AdapterError.
        Closing the iterator early cancels the request at the engine."""
        ...

    async def relay(self, request: GenerateRequest, sink: EventSink) -> None:
        """`stream`, pushed: the same events, handed to `sink` as they arrive (those of one
        read together); returns after the `End`, or once `sink` declined events (the
        request is cancelled at the engine). Raises AdapterError as `stream` does, after
        handing over what came before the error."""
        ...

    async def stats(self) -> EngineStats:
        """The engine's own view of its load (unknown fields stay None)."""
        ...

    async def close(self) -> None:
        """Release client resources (sessions, channels)."""
        ...


async def relay_pulled(events: AsyncGenerator[StreamEvent, None], sink: EventSink) -> None:
    """`relay` for an adapter whose events come by pull (in-process, gRPC): each event
    handed to `sink` as it is yielded; the generator closed when `sink` declines one."""
    async with aclosing(events):
        async for event in events:
            if not sink([event]):
                return


class StallGuard:
    """Fails a stream with DECODE_TIMEOUT when the engine sends nothing for `timeout_s`:

        def sink(events):
            guard.beat()
            ...

        async with StallGuard(timeout_s, engine) as guard:
            await adapter.relay(request, sink)

    The engine request is cancelled either way (the relay is cancelled inside the guard). A
    context the relay's consumer holds, beating it per read, rather than a layer wrapped
    around the stream. One timer per stream, moved at most every quarter timeout rather
    than per read, so a stall is detected between `timeout_s` and 1.25 times `timeout_s`
    after the last read, at the cost of one clock read per read.
    """

    __slots__ = ("_engine", "_loop", "_moved", "_slack", "_timeout", "_timeout_s")

    def __init__(self, timeout_s: float, engine: str) -> None:
        self._timeout_s, self._engine = timeout_s, engine
        self._slack = timeout_s / 4
        self._loop = asyncio.get_running_loop()
        self._moved = self._loop.time()
        self._timeout = asyncio.timeout_at(self._moved + timeout_s + self._slack)

    async def __aenter__(self) -> StallGuard:
        await self._timeout.__aenter__()
        return self

    def beat(self) -> None:
        """An event arrived."""
        now = self._loop.time()
        if now - self._moved > self._slack:
            self._timeout.reschedule(now + self._timeout_s + self._slack)
            self._moved = now

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(kind, error, trace)
        except TimeoutError:
            raise AdapterError(
                ErrorCode.DECODE_TIMEOUT,
                f"the engine sent nothing for {self._timeout_s:g} s",
                engine=self._engine,
            ) from None
