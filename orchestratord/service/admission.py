"""Admission: a `Submission` — what every door (native tasks, the OpenAI API) turns its
request into — becomes an accepted task in one pool's queue, or a typed `Refusal`.

It resolves the pool once — through a `model → pools` index, viewing only the pools that
serve the model — asks the core whether the request fits, and builds what the rest of the
daemon works with: the core's `Task` and the engine-ready `GenerateRequest` (a conversation
rendered by the pool's chat template, or left for the engine's own). Nothing after
admission sees a wire model (after TGI's `validation.rs`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import ceil

from uuid_utils import uuid7

from orchestrator_core.admission import AdmissionRequest, Denied, check, resolve_pool
from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import AUTO, Determinism, Placement, PlacementMode, Priority, Task
from orchestratord.chat_template import ChatTemplateError
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.quotas import QuotaAccount
from orchestratord.service.records import Door, TaskRecord, session_key
from orchestratord.service.refusal import Refusal
from orchestratord.service.streams import StreamLimits
from orchestratord.service.tasks import TaskBook
from orchestratord.telemetry import Metrics, tracing
from worker_adapters.base import ChatMessage, GenerateRequest, chat_dicts

#: max_tokens when the request names none and the pool's context is not known yet.
DEFAULT_MAX_TOKENS = 256
#: Tokens a conversation's template adds per message, for the admission estimate.
_TOKENS_PER_TURN = 4


@dataclass(frozen=True, slots=True)
class Submission:
    """One task to run, as a door hands it to admission: a `prompt`, or `messages`."""

    model: str
    tenant: str
    correlation_id: str
    door: Door = Door.NATIVE
    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    #: None: as many as the pool's context leaves.
    max_tokens: int | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    priority: Priority = Priority.INTERACTIVE
    #: Budget in ms from now.
    deadline_ms: int | None = None
    determinism: Determinism = Determinism.BEST_EFFORT
    placement: Placement = AUTO
    pool_id: str | None = None
    session_id: str | None = None
    task_id: str | None = None
    #: See TaskRecord.cancel_when_abandoned.
    cancel_when_abandoned: bool = False
    #: A Batch API item: (batch id, input line).
    batch: tuple[str, int] | None = None
    #: The submitting key's quotas, if it has any.
    quota: QuotaAccount | None = None
    #: The client's W3C trace context (a valid `traceparent`), continued by the task's trace.
    traceparent: str | None = None


class Admission:
    def __init__(
        self,
        pools: Mapping[str, PoolDispatcher],
        book: TaskBook,
        metrics: Metrics,
        now_ms: Callable[[], float],
        *,
        streams: StreamLimits,
    ) -> None:
        self._pools = pools
        self._book = book
        self._metrics = metrics
        self._now_ms = now_ms
        self._streams = streams
        #: The pools serving each model, in config order.
        self._by_model: dict[str, list[PoolDispatcher]] = {}
        for pool in pools.values():
            self._by_model.setdefault(pool.config.model, []).append(pool)

    def serves(self, model: str) -> bool:
        """Some pool serves `model`."""
        return model in self._by_model

    def admit(self, sub: Submission) -> TaskRecord:
        """Queue `sub` as a task, or raise Refusal."""
        task_id = sub.task_id or str(uuid7())  # time-ordered: the store's key index appends
        if task_id in self._book:
            raise Refusal(
                ErrorCode.INVALID_PARAMS, f"task_id {task_id} already exists", field="task_id"
            )
        placement = sub.placement
        if placement.mode is not PlacementMode.AUTO and not placement.replica_id:
            raise Refusal(
                ErrorCode.INVALID_PARAMS,
                f"placement.replica_id is required with mode {placement.mode.value!r}",
                field="placement.replica_id",
            )
        now = self._now_ms()
        candidates = [p.view() for p in self._by_model.get(sub.model, ())]
        resolved = resolve_pool(sub.model, sub.pool_id, candidates, self._by_model)
        if isinstance(resolved, Denied):
            raise self._refused(resolved, None)
        pool = self._pools[resolved.pool_id]
        prompt, messages = self._render(pool, sub)
        text_bytes = len(prompt.encode()) + sum(len(m.content.encode()) for m in messages)
        prompt_tokens = ceil(text_bytes / pool.config.bytes_per_token)
        prompt_tokens += _TOKENS_PER_TURN * len(messages)
        max_tokens = sub.max_tokens
        if max_tokens is None:
            ctx = resolved.ctx_max
            max_tokens = max(ctx - prompt_tokens, 1) if ctx else DEFAULT_MAX_TOKENS
        strict = sub.determinism is Determinism.STRICT or pool.config.strict
        determinism = Determinism.STRICT if strict else Determinism.BEST_EFFORT
        deadline = now + sub.deadline_ms if sub.deadline_ms else None
        total, busy = pool.slot_counts()
        denied = check(
            AdmissionRequest(
                sub.model, prompt_tokens, max_tokens, determinism, placement, deadline
            ),
            resolved,
            ahead=pool.ahead_of(sub.priority),
            slots_total=total,
            slots_busy=busy,
            estimator=pool.estimator,
            now_ms=now,
        )
        if denied is not None:
            raise self._refused(denied, pool.id)
        footprint = self._book.reservation(text_bytes, max_tokens)
        if not self._book.make_room(footprint):
            self._metrics.on_rejected(pool.id, "memory_budget")
            raise Refusal(
                ErrorCode.ADMISSION_REJECT,
                f"the daemon's memory budget is held by live tasks (this one needs "
                f"{footprint} bytes; fewer max_tokens or a shorter prompt needs less)",
                pool_id=pool.id, retry_after_ms=pool.estimator.backoff_ms(total),
                policy_label="memory-budget",
            )  # fmt: skip
        worst_tokens = prompt_tokens + max_tokens
        if sub.quota is not None:
            sub.quota.check(worst_tokens)
        seed = sub.seed
        if seed is None and strict:
            seed = random.getrandbits(31)  # reported in `started`, so the run can be replayed
        session = session_key(sub.tenant, sub.session_id) if sub.session_id else None
        task = Task(
            id=task_id, pool_id=pool.id, priority=sub.priority, tenant=sub.tenant,
            session_id=session, deadline_ms=deadline, determinism=determinism,
            prompt_tokens=prompt_tokens, max_tokens=max_tokens, placement=placement,
        )  # fmt: skip
        request = GenerateRequest(
            prompt=prompt, max_tokens=max_tokens, seed=seed, temperature=sub.temperature,
            top_p=sub.top_p, top_k=sub.top_k, stop=sub.stop, cache_prompt=not strict,
            priority=sub.priority.rank, messages=messages, traceparent=sub.traceparent,
        )  # fmt: skip
        task.prefix = pool.placement.blocks(request)
        rec = TaskRecord(
            task=task, request=request, model=pool.config.model, door=sub.door,
            engine=pool.config.engine, stream=self._streams.new(),
            correlation_id=sub.correlation_id, admitted_at=now, created=int(time.time()),
            seed=seed, cancel_when_abandoned=sub.cancel_when_abandoned, batch=sub.batch,
            footprint=footprint,
        )  # fmt: skip
        if tracing.enabled():  # (off, not even the attributes are built)
            rec.spans = tracing.admitted(
                sub.traceparent,
                {"task_id": task_id, "pool_id": pool.id, "model": rec.model,
                 "tenant": sub.tenant, "priority": sub.priority.value, "door": sub.door.value},
                {"priority": sub.priority.value, "tenant": sub.tenant},
            )  # fmt: skip
        try:
            pool.admit(rec)  # (it may dispatch the task at once)
        except Refusal as refused:
            tracing.finished(rec.spans, "refused", refused.code.value, None, 0)
            raise
        tracing.queued(rec.spans, rec.queue_position, rec.predicted_start_ms)
        if sub.quota is not None:  # checked above, with no await between: no overspend
            sub.quota.charge(rec, worst_tokens)
        return rec

    def _render(self, pool: PoolDispatcher, sub: Submission) -> tuple[str, tuple[ChatMessage, ...]]:
        """(prompt, messages) for the engine: a conversation rendered by the pool's chat
        template, or left for an engine that templates it itself."""
        if not sub.messages:
            return sub.prompt, ()
        template = pool.chat_template
        if template is None:
            if not pool.engine_renders_chat:
                raise Refusal(
                    ErrorCode.INVALID_PARAMS,
                    f"pool {pool.id!r} ({pool.config.engine}) cannot render a conversation: "
                    "its engine has no chat route and the pool sets no chat_template",
                    field="messages", pool_id=pool.id,
                )  # fmt: skip
            return "", sub.messages
        try:
            return template.render(chat_dicts(sub.messages)), ()
        except ChatTemplateError as e:
            raise Refusal(ErrorCode.INVALID_PARAMS, str(e), field="messages") from None

    def _refused(self, denied: Denied, pool_id: str | None) -> Refusal:
        self._metrics.on_rejected(pool_id or "none", denied.code.value.lower())
        return Refusal(denied.code, denied.message, field=denied.field, pool_id=pool_id)
