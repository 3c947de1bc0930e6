"""Service-time estimates for predicted start times, deadlines and backoff hints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class ServiceEstimator:
    """Exponentially weighted averages of how long a task holds a slot and how long one
    token takes, updated from finished tasks. Before the first observation the priors
    (default 0: unknown) are used, and an unknown estimate never rejects a deadline."""

    alpha: float = 0.2
    task_ms: float = 0.0
    token_ms: float = 0.0
    observed: int = 0
    #: Prefill time per uncached prompt token, where engines report it (0: unknown).
    prefill_token_ms: float = 0.0

    def observe(self, service_ms: float, tokens_out: int) -> None:
        per_token = service_ms / tokens_out if tokens_out > 0 else self.token_ms
        if self.observed == 0:
            self.task_ms, self.token_ms = service_ms, per_token
        else:
            a = self.alpha
            self.task_ms += a * (service_ms - self.task_ms)
            self.token_ms += a * (per_token - self.token_ms)
        self.observed += 1

    def observe_prefill(self, prefill_ms: float, tokens: int) -> None:
        """An engine prefilled `tokens` uncached prompt tokens in `prefill_ms`. Short
        prefills (under 16 tokens: mostly overhead) teach nothing about the per-token cost."""
        if tokens < 16:
            return
        per_token = prefill_ms / tokens
        if self.prefill_token_ms == 0.0:
            self.prefill_token_ms = per_token
        else:
            self.prefill_token_ms += self.alpha * (per_token - self.prefill_token_ms)

    def predicted_start_ms(self, ahead: int, slots_total: int, slots_busy: int) -> int:
        """When a task with `ahead` queued tasks before it should start, from now.

        Free slots absorb the first tasks at once; after that every `slots_total` tasks
        take one average task time."""
        free = max(slots_total - slots_busy, 0)
        if ahead < free:
            return 0
        waves = (ahead - free) // max(slots_total, 1) + 1
        return round(waves * self.task_ms)

    def decode_ms(self, max_tokens: int) -> float:
        return max_tokens * self.token_ms

    def backoff_ms(self, slots_total: int, floor_ms: int = 1000) -> int:
        """How long a rejected client should wait for room: about one slot turnover."""
        per_slot = self.task_ms / max(slots_total, 1)
        return max(floor_ms, round(per_slot))
