"""A deterministic in-process engine for fast tests and benchmarks.

Never the product's default: real engines are. It goes through the same `WorkerAdapter`
interface and adds fault injection: fail after N tokens (as a dead engine would), stall,
overload, slow start. Same (seed, prompt, max_tokens) → same tokens, on any replica.

Faults are set per engine (`MockConfig`) or per request by directives in the prompt, so
tests can hold a slot busy or break a stream at an exact token without timing:
`[[stall:N]]` hangs after N tokens until cancelled; `[[fail:N]]` resets the connection
after N tokens; `[[big:K]]` makes every token K bytes long (large outputs);
`[[reject:REPLICA]]` makes that one replica answer "overloaded" (per-replica faults).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import (
    AdapterError,
    Capabilities,
    End,
    EngineStats,
    EventSink,
    GenerateRequest,
    StreamEvent,
    Token,
    relay_pulled,
)

ENGINE = "mock"
VERSION = "mock-1"
_WORDS = (
    "the", "queue", "admits", "tokens", "stream", "slot", "replica", "pool", "fair", "batch",
    "llama", "seed", "prompt", "engine", "lease", "drain", "warm", "cache", "order", "byte",
)  # fmt: skip


@dataclass(slots=True)
class MockConfig:
    slots: int = 4
    ctx_per_slot: int = 4096
    #: Tokens per second per stream; 0 = as fast as the event loop allows.
    token_rate: float = 0.0
    #: The model identity this engine reports (reload swaps it).
    model: str = "mock-model"
    #: Seconds before `ready()` turns true.
    start_delay_s: float = 0.0
    # Fault injection
    fail_after_tokens: int | None = None
    stall_after_tokens: int | None = None
    overloaded: bool = False
    fail_start: bool = False
    #: The replica this engine is (for per-replica fault directives).
    replica_id: str = ""
    #: The replica that alters every stream's third token: a non-deterministic replica,
    #: made on purpose (the determinism gate must fail on it).
    perturb_replica: str | None = None


_DIRECTIVE = re.compile(r"\[\[(stall|fail|big):(\d+)\]\]")
_REJECT = re.compile(r"\[\[reject:([^\]]+)\]\]")


def render_chat(request: GenerateRequest) -> str:
    """The mock's own chat template (engines with a chat route render conversations
    themselves): one `<|role|>content` line per message, then the assistant's turn."""
    if not request.messages:
        return request.prompt
    turns = "".join(f"<|{m.role}|>{m.content}\n" for m in request.messages)
    return turns + "<|assistant|>"


def token_stream(seed: int, prompt: str, n: int) -> list[str]:
    """The mock's output for a request: a pure function of (seed, prompt, n)."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    return [(" " if i else "") + rng.choice(_WORDS) for i in range(n)]


class MockAdapter:
    """A mock engine replica; the state a real engine would hold is kept here."""

    engine = ENGINE

    def __init__(self, config: MockConfig | None = None) -> None:
        self.config = config or MockConfig()
        self.active = 0
        self._born = time.monotonic()

    async def ready(self) -> bool:
        if self.config.fail_start:
            return False
        return time.monotonic() - self._born >= self.config.start_delay_s

    async def stats(self) -> EngineStats:
        return EngineStats(self.active, None)

    async def capabilities(self) -> Capabilities:
        digest = hashlib.sha256(self.config.model.encode()).hexdigest()
        return Capabilities(
            ENGINE, VERSION, self.config.slots, self.config.ctx_per_slot,
            self.config.model, f"sha256:{digest}",
        )  # fmt: skip

    async def relay(self, request: GenerateRequest, sink: EventSink) -> None:
        await relay_pulled(self.stream(request), sink)

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamEvent, None]:
        cfg = self.config
        rejected = cfg.replica_id in _REJECT.findall(render_chat(request))
        if cfg.overloaded or rejected or self.active >= cfg.slots:
            raise AdapterError(ErrorCode.REPLICA_EXHAUSTED, "mock engine overloaded", engine=ENGINE)
        if request.max_tokens < 0:
            raise AdapterError(ErrorCode.INVALID_PARAMS, "max_tokens must be >= 0", engine=ENGINE)
        self.active += 1
        try:
            seed = request.seed if request.seed is not None else 0
            prompt = render_chat(request)
            words = token_stream(seed, prompt, request.max_tokens)
            delay = 1.0 / cfg.token_rate if cfg.token_rate > 0 else 0.0
            fail_after, stall_after = cfg.fail_after_tokens, cfg.stall_after_tokens
            big = 0
            for kind, n in _DIRECTIVE.findall(prompt):
                if kind == "fail":
                    fail_after = int(n)
                elif kind == "stall":
                    stall_after = int(n)
                else:
                    big = int(n)
            sent = 0
            for word in words:
                if fail_after is not None and sent >= fail_after:
                    raise AdapterError(
                        ErrorCode.WORKER_RESET, "mock engine connection reset", engine=ENGINE
                    )
                if stall_after is not None and sent >= stall_after:
                    await asyncio.Future()  # hangs until cancelled, like a wedged engine
                if delay:
                    await asyncio.sleep(delay)  # the engine's own decode time
                elif sent % 64 == 63:
                    await asyncio.sleep(0)  # let other streams run, as a real engine would
                if request.stop and any(word.strip() == s for s in request.stop):
                    yield End("stop", sent, len(prompt.split()))
                    return
                if sent == 2 and cfg.perturb_replica == cfg.replica_id:
                    word += "~"
                sent += 1
                yield Token((word * (big // len(word) + 1))[:big] if big else word)
            yield End("length", sent, len(prompt.split()))
        finally:
            self.active -= 1

    async def close(self) -> None:
        return None
