"""Per-key quotas: how many tasks a key may have live and queued, and how many tokens it
may spend a minute. Past one, a submission is refused with 429 `QUOTA_EXCEEDED` and a
`Retry-After`.

Counts are exact, not sampled: an account keeps its key's live tasks and drops them as they
end. Tokens are a bucket holding a minute's worth that refills continuously; a task is
charged its worst case at admission (prompt estimate + `max_tokens`) and, once it ends, the
tokens it did not use are given back — so a burst can never overspend, and a key that asks
for more than it uses is not punished for long.
"""

from __future__ import annotations

from collections.abc import Callable
from math import ceil

from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import TaskState
from orchestratord.principals import Limits
from orchestratord.service.records import TaskRecord
from orchestratord.service.refusal import Refusal

#: A concurrency limit frees up when one of the key's tasks ends; clients learn of that on
#: their streams, so the advice is short.
_CONCURRENCY_RETRY_MS = 1000


class QuotaAccount:
    """One key's live tasks and token bucket."""

    def __init__(self, key_id: str, limits: Limits, now_ms: Callable[[], float]) -> None:
        self.key_id = key_id
        self.limits = limits
        self._now_ms = now_ms
        self._live: list[tuple[TaskRecord, int]] = []
        per_minute = limits.tokens_per_minute
        self._tokens = float(per_minute or 0)
        self._refilled_at = now_ms()

    def check(self, tokens: int) -> None:
        """Refuse (Refusal) a task that would put the key past a limit; `tokens` is its
        worst case."""
        limits = self.limits
        live = self._settle()
        if limits.max_concurrent is not None and len(live) >= limits.max_concurrent:
            self._refuse(f"{limits.max_concurrent} tasks live at once", _CONCURRENCY_RETRY_MS)
        if limits.max_queued is not None:
            queued = sum(1 for rec, _ in live if rec.task.state is TaskState.QUEUED)
            if queued >= limits.max_queued:
                self._refuse(f"{limits.max_queued} tasks queued at once", _CONCURRENCY_RETRY_MS)
        per_minute = limits.tokens_per_minute
        if per_minute is not None:
            if tokens > per_minute:
                raise Refusal(
                    ErrorCode.INVALID_PARAMS,
                    f"this task may use {tokens} tokens (prompt + max_tokens); the key "
                    f"allows {per_minute} a minute: ask for fewer max_tokens",
                    field="max_tokens",
                )
            self._refill()
            if self._tokens < tokens:
                wait_ms = ceil((tokens - self._tokens) * 60_000 / per_minute)
                self._refuse(f"{per_minute} tokens a minute", wait_ms)

    def charge(self, rec: TaskRecord, tokens: int) -> None:
        """Count an admitted task (checked by `check` in the same step)."""
        self._live.append((rec, tokens))
        if self.limits.tokens_per_minute is not None:
            self._tokens -= tokens

    def _refuse(self, limit: str, retry_after_ms: int) -> None:
        raise Refusal(
            ErrorCode.QUOTA_EXCEEDED,
            f"API key {self.key_id} is at its limit of {limit}",
            retry_after_ms=retry_after_ms,
        )

    def _settle(self) -> list[tuple[TaskRecord, int]]:
        """Drop the tasks that ended, giving back the tokens they did not use."""
        if any(rec.ended for rec, _ in self._live):
            kept = []
            for rec, charged in self._live:
                if not rec.ended:
                    kept.append((rec, charged))
                elif self.limits.tokens_per_minute is not None:
                    used = (rec.tokens_in or rec.task.prompt_tokens) + rec.tokens_out
                    self._tokens += max(0, charged - used)
            self._live = kept
        return self._live

    def _refill(self) -> None:
        per_minute = self.limits.tokens_per_minute or 0
        now = self._now_ms()
        self._tokens = min(
            float(per_minute), self._tokens + (now - self._refilled_at) * per_minute / 60_000
        )
        self._refilled_at = now


class Quotas:
    """The accounts of the keys that have limits, made on first use."""

    def __init__(self, now_ms: Callable[[], float]) -> None:
        self._now_ms = now_ms
        self._accounts: dict[str, QuotaAccount] = {}

    def account(self, key_id: str | None, limits: Limits) -> QuotaAccount | None:
        """The account of a key with limits (None for keys without any). A key whose
        limits changed (its file was edited and re-read) starts a fresh account."""
        if key_id is None or limits == Limits():
            return None
        found = self._accounts.get(key_id)
        if found is None or found.limits != limits:
            found = self._accounts[key_id] = QuotaAccount(key_id, limits, self._now_ms)
        return found
