"""Admission: the checks a request passes before it may enter a pool's queue.

Validation of shapes and types happens at the API edge; this decides what needs the pools'
state: which pool serves the model, whether the request fits its context, whether the pool
can serve at all, and whether a deadline is reachable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from orchestrator_core.errors import ErrorCode
from orchestrator_core.estimator import ServiceEstimator
from orchestrator_core.model import AUTO, Determinism, Placement, PlacementMode
from orchestrator_core.placement import PlacementRequest, ReplicaSnapshot, could_ever_serve


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool as admission sees it."""

    pool_id: str
    model: str
    #: Context tokens one sequence may use (prompt + generated); None when not yet known.
    ctx_max: int | None
    draining: bool = False
    replicas: Sequence[ReplicaSnapshot] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    model: str
    prompt_tokens: int
    max_tokens: int
    determinism: Determinism = Determinism.BEST_EFFORT
    placement: Placement = AUTO
    #: Absolute deadline on the caller's clock, in ms.
    deadline_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Denied:
    code: ErrorCode
    message: str
    #: The field the problem is about (for INVALID_PARAMS), as a dotted path.
    field: str | None = None


def resolve_pool(
    model: str,
    pool_id: str | None,
    pools: Sequence[PoolView],
    known_models: Iterable[str] | None = None,
) -> PoolView | Denied:
    """The pool that serves `model` (and is `pool_id`, when given) among `pools` — the
    candidates, in config order; `known_models` (default: theirs) names the alternatives
    when none fits."""
    serving = [p for p in pools if p.model == model]
    if pool_id is not None:
        serving = [p for p in serving if p.pool_id == pool_id]
    if not serving:
        known = sorted(set(known_models if known_models is not None else (p.model for p in pools)))
        where = f" in pool {pool_id!r}" if pool_id else ""
        return Denied(
            ErrorCode.UNKNOWN_MODEL,
            f"model {model!r} is not served{where}; known models: {', '.join(known)}",
            "model",
        )
    # Several pools may serve one model: take the first that is not draining (config order).
    return next((p for p in serving if not p.draining), serving[0])


def check(
    req: AdmissionRequest,
    pool: PoolView,
    *,
    ahead: int,
    slots_total: int,
    slots_busy: int,
    estimator: ServiceEstimator,
    now_ms: float,
) -> Denied | None:
    """Whether `req` may be queued on `pool`; `ahead` is how many queued tasks would
    dispatch before it."""
    if pool.ctx_max is not None and req.prompt_tokens + req.max_tokens > pool.ctx_max:
        return Denied(
            ErrorCode.INVALID_PARAMS,
            f"prompt ({req.prompt_tokens} tokens) + max_tokens ({req.max_tokens}) exceeds "
            f"the context limit of {pool.ctx_max} tokens of pool {pool.pool_id!r}",
            "max_tokens",
        )
    if pool.draining:
        return Denied(
            ErrorCode.POOL_DRAINING,
            f"pool {pool.pool_id!r} is drained by an operator and takes no new work until it "
            f"is resumed (POST /v1/pools/{pool.pool_id}/resume)",
        )
    pinned = req.placement.mode is PlacementMode.PIN
    if pinned and all(r.id != req.placement.replica_id for r in pool.replicas):
        return Denied(
            ErrorCode.INVALID_PARAMS,
            f"replica {req.placement.replica_id!r} is not in pool {pool.pool_id!r}",
            "placement.replica_id",
        )
    strict = req.determinism is Determinism.STRICT
    # never will (config); a remote pool with no agent joined yet is merely unavailable
    if strict and pool.replicas and not any(r.deterministic for r in pool.replicas):
        return Denied(
            ErrorCode.INVALID_PARAMS,
            f"pool {pool.pool_id!r} has no deterministic replicas: a strict task needs a pool "
            "configured `determinism: strict`",
            "determinism",
        )
    if not could_ever_serve(PlacementRequest(req.determinism, req.placement), pool.replicas):
        what = "deterministic replica" if req.determinism is Determinism.STRICT else "replica"
        return Denied(
            ErrorCode.POOL_UNAVAILABLE, f"pool {pool.pool_id!r} has no {what} that can serve"
        )
    if req.deadline_ms is not None:
        budget = req.deadline_ms - now_ms
        if budget <= 0:
            return Denied(ErrorCode.DEADLINE_UNMET, "deadline_ms is already in the past")
        start = estimator.predicted_start_ms(ahead, slots_total, slots_busy)
        expected = start + estimator.decode_ms(req.max_tokens)
        if expected > budget:
            return Denied(
                ErrorCode.DEADLINE_UNMET,
                f"expected completion in {expected:.0f} ms (start in {start} ms) "
                f"exceeds the deadline in {budget:.0f} ms",
            )
    return None
