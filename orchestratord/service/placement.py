"""What one pool's placement remembers and learns, kept apart from the dispatcher's loop:
the prefix index (prefix-aware placement), the tokens each tenant is charged (token
fairness), and the prefill cost engines report (whether waiting for a warm replica pays).

The dispatcher calls it at the moments it names: `blocks` at admission, `routing` before a
dispatch decision, `started` when a slot is leased, `streamed` before each pump, `ended`
when a runner is done, `forget` when a replica's cache is gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from orchestrator_core.dispatch import DispatchStep, PrefixRouting
from orchestrator_core.estimator import ServiceEstimator
from orchestrator_core.prefix import NAME_BYTES, PrefixIndex, block_names
from orchestrator_core.queue import PoolQueue, TokenCosts
from orchestratord.config import PoolConfig
from orchestratord.engines import ENGINES
from orchestratord.service.records import TaskRecord
from orchestratord.telemetry import Metrics
from pool_managerd.replica import Lease
from worker_adapters.base import GenerateRequest


def token_costs(config: PoolConfig) -> TokenCosts | None:
    """The pool's token costs under token fairness; None under request fairness."""
    queue = config.queue
    if queue.fairness != "tokens":
        return None
    return TokenCosts(queue.token_costs.input, queue.token_costs.output)


class PoolPlacement:
    def __init__(
        self, config: PoolConfig, queue: PoolQueue, estimator: ServiceEstimator, metrics: Metrics
    ) -> None:
        self.pool_id = config.id
        self._queue = queue
        self._estimator = estimator
        self._metrics = metrics
        placement = config.placement
        self._block_bytes = placement.block_bytes
        self._tokens_per_block = placement.block_bytes / config.bytes_per_token
        slot_cache = ENGINES[config.engine].slot_cache
        # a replica's LRU and its slots hold up to `capacity` names each (`PrefixIndex`)
        capacity = placement.index_bytes // NAME_BYTES // (2 if slot_cache else 1)
        if placement.engine_cache_tokens is not None:
            capacity = min(capacity, int(placement.engine_cache_tokens / self._tokens_per_block))
        self._max_blocks = max(capacity, 1)
        #: None: placement ignores prompts (off, or a strict pool: its engines cache nothing).
        self.prefix: PrefixRouting | None = None
        if placement.prefix_aware and not config.strict:
            self.prefix = PrefixRouting(
                PrefixIndex(self._max_blocks), slot_cache,
                placement.load_guard, placement.max_wait_ms,
            )  # fmt: skip

    def blocks(self, request: GenerateRequest) -> tuple[int, ...]:
        """The prompt's block names (empty when placement ignores prompts, or the prompt
        cannot be cached: strict tasks run with the cache off)."""
        if self.prefix is None or not request.cache_prompt:
            return ()
        if request.messages:  # the engine renders it: its template keeps the order
            text = "".join(f"{m.role}\n{m.content}\n" for m in request.messages).encode()
        else:
            text = request.prompt.encode()
        return block_names(text, self._block_bytes, self._max_blocks)

    def prefill_ms_per_block(self) -> float | None:
        """What one cached block saves, by the engines' own prefill reports (None: unknown,
        and a task never waits for a warm replica on a guess)."""
        per_token = self._estimator.prefill_token_ms
        return per_token * self._tokens_per_block if per_token else None

    def started(self, rec: TaskRecord, step: DispatchStep, lease: Lease) -> None:
        """A slot was leased for `step`: name the slot to the engine, count the decision."""
        self._metrics.on_placement(self.pool_id, step.reason)
        if rec.task.hold_until_ms is not None:
            self._metrics.on_placement(self.pool_id, "waited-for-prefix")
        prefix = self.prefix
        if prefix is None or not rec.task.prefix:
            return
        if prefix.per_slot and rec.request is not None and lease.slot < lease.replica.slots_total:
            rec.request = replace(rec.request, slot=lease.slot)
        cached = round(step.cached_blocks * self._tokens_per_block)
        self._metrics.on_prefix(self.pool_id, rec.task.prompt_tokens, cached)

    def streamed(self, running: Iterable[TaskRecord]) -> None:
        """Token fairness: charge the output streamed since the last look (before each
        dispatch decision: the counters are read only then)."""
        if self._queue.token_costs is None:
            return
        for rec in running:
            new = rec.tokens_out - rec.tokens_charged
            if new > 0:
                rec.tokens_charged = rec.tokens_out
                self._queue.charge(rec.task, output_tokens=new)

    def ended(self, rec: TaskRecord) -> None:
        """The runner is done: charge the last output, correct the prompt charge by the
        engine's count (upwards only: the estimate was charged already), learn the prefill
        cost and count the engine's cache hits."""
        self.streamed((rec,))
        end = rec.engine_end
        if end is None:
            return
        if end.tokens_in is not None and end.tokens_in > rec.task.prompt_tokens:
            self._queue.charge(rec.task, prompt_tokens=end.tokens_in - rec.task.prompt_tokens)
        if end.prefill_ms is not None and end.prefill_tokens is not None:
            self._estimator.observe_prefill(end.prefill_ms, end.prefill_tokens)
        if end.cached_tokens is not None:
            self._metrics.on_engine_cache_hit(self.pool_id, end.cached_tokens)

    def forget(self, replica_id: str) -> None:
        """The replica's cache is gone (it went down, restarted or was removed)."""
        if self.prefix is not None:
            self.prefix.index.forget(replica_id)
