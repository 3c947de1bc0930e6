"""Admission: a validated `TaskRequest` becomes an accepted task in one pool's queue, or a
typed `Refusal`.

It resolves the pool once — through a `model → pools` index, viewing only the pools that
serve the model — asks the core whether the request fits, and builds what the rest of the
daemon works with: the core's `Task` and the engine-ready `GenerateRequest`. Nothing after
admission sees the API model (after TGI's `validation.rs`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from math import ceil

from orchestrator_core.admission import AdmissionRequest, Denied, check, resolve_pool
from orchestrator_core.errors import ErrorCode
from orchestrator_core.model import Determinism, Placement, PlacementMode, Task
from orchestratord.api_models import TaskRequest
from orchestratord.service.dispatcher import PoolDispatcher
from orchestratord.service.refusal import Refusal
from orchestratord.service.streams import TaskStream
from orchestratord.service.tasks import TaskBook, TaskRecord
from orchestratord.telemetry import Metrics
from worker_adapters.base import GenerateRequest


class Admission:
    def __init__(
        self,
        pools: Mapping[str, PoolDispatcher],
        book: TaskBook,
        metrics: Metrics,
        now_ms: Callable[[], float],
        *,
        stream_buffer_events: int,
    ) -> None:
        self._pools = pools
        self._book = book
        self._metrics = metrics
        self._now_ms = now_ms
        self._stream_buffer_events = stream_buffer_events
        #: The pools serving each model, in config order.
        self._by_model: dict[str, list[PoolDispatcher]] = {}
        for pool in pools.values():
            self._by_model.setdefault(pool.config.model, []).append(pool)

    def admit(
        self, req: TaskRequest, *, task_id: str, tenant: str, correlation_id: str
    ) -> TaskRecord:
        """Queue `req` as task `task_id`, or raise Refusal."""
        if task_id in self._book:
            raise Refusal(
                ErrorCode.INVALID_PARAMS, f"task_id {task_id} already exists", field="task_id"
            )
        placement = Placement(req.placement.mode, req.placement.replica_id)
        if placement.mode is not PlacementMode.AUTO and not placement.replica_id:
            raise Refusal(
                ErrorCode.INVALID_PARAMS,
                f"placement.replica_id is required with mode {placement.mode.value!r}",
                field="placement.replica_id",
            )
        now = self._now_ms()
        candidates = [p.view() for p in self._by_model.get(req.model, ())]
        resolved = resolve_pool(req.model, req.placement.pool_id, candidates, self._by_model)
        if isinstance(resolved, Denied):
            raise self._refused(resolved, None)
        pool = self._pools[resolved.pool_id]
        prompt_tokens = ceil(len(req.prompt.encode()) / pool.config.bytes_per_token)
        strict = req.determinism is Determinism.STRICT or pool.config.strict
        determinism = Determinism.STRICT if strict else Determinism.BEST_EFFORT
        deadline = now + req.deadline_ms if req.deadline_ms else None
        total, busy = pool.slot_counts()
        denied = check(
            AdmissionRequest(
                req.model, prompt_tokens, req.max_tokens, determinism, placement, deadline
            ),
            resolved,
            ahead=pool.ahead_of(req.priority),
            slots_total=total,
            slots_busy=busy,
            estimator=pool.estimator,
            now_ms=now,
        )
        if denied is not None:
            raise self._refused(denied, pool.id)
        seed = req.seed
        if seed is None and strict:
            seed = random.getrandbits(31)  # reported in `started`, so the run can be replayed
        task = Task(
            id=task_id, pool_id=pool.id, priority=req.priority, tenant=tenant,
            session_id=req.session_id, deadline_ms=deadline, determinism=determinism,
            prompt_tokens=prompt_tokens, max_tokens=req.max_tokens, placement=placement,
        )  # fmt: skip
        sampling = req.sampling
        request = GenerateRequest(
            prompt=req.prompt, max_tokens=req.max_tokens, seed=seed,
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            stop=tuple(sampling.stop), cache_prompt=not strict, priority=req.priority.rank,
        )  # fmt: skip
        rec = TaskRecord(
            task=task, request=request, model=pool.config.model, engine=pool.config.engine,
            stream=TaskStream(self._stream_buffer_events), correlation_id=correlation_id,
            admitted_at=now, seed=seed,
        )  # fmt: skip
        pool.admit(rec)
        return rec

    def _refused(self, denied: Denied, pool_id: str | None) -> Refusal:
        self._metrics.on_rejected(pool_id or "none", denied.code.value.lower())
        return Refusal(denied.code, denied.message, field=denied.field, pool_id=pool_id)
