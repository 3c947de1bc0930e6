"""The task and its explicit state machine (after vLLM v1's request states).

    queued ──► running ──► completed | failed | canceled
      │  ▲        │
      │  └────────┘  requeue: the replica died before the first token
      └──► canceled | evicted | expired

Every accepted task ends in exactly one terminal state; an illegal transition raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orchestrator_core.errors import ErrorCode


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """Dispatch order: lower goes first."""
        return 0 if self is Priority.INTERACTIVE else 1


PRIORITIES: tuple[Priority, ...] = (Priority.INTERACTIVE, Priority.BATCH)


class Determinism(StrEnum):
    STRICT = "strict"
    BEST_EFFORT = "best_effort"


class PlacementMode(StrEnum):
    AUTO = "auto"
    PREFER = "prefer"
    PIN = "pin"


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    EVICTED = "evicted"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (TaskState.QUEUED, TaskState.RUNNING)


_ALLOWED: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset(
        {TaskState.RUNNING, TaskState.CANCELED, TaskState.EVICTED, TaskState.EXPIRED}
    ),
    TaskState.RUNNING: frozenset(
        {TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELED, TaskState.QUEUED}
    ),
}


class IllegalTransition(RuntimeError):
    """A state change the state machine does not allow (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task may run: anywhere, preferably on a replica, or only on one."""

    mode: PlacementMode = PlacementMode.AUTO
    replica_id: str | None = None


#: Run anywhere in the pool.
AUTO = Placement()


@dataclass(slots=True, eq=False)
class Task:
    """One inference job as the scheduler sees it (no prompt text: only what decides
    ordering and placement)."""

    id: str
    pool_id: str
    priority: Priority = Priority.INTERACTIVE
    tenant: str = "default"
    session_id: str | None = None
    deadline_ms: float | None = None
    determinism: Determinism = Determinism.BEST_EFFORT
    prompt_tokens: int = 0
    max_tokens: int = 0
    placement: Placement = AUTO
    #: Chained names of the prompt's leading blocks, for prefix-aware placement (empty:
    #: placement ignores the prompt).
    prefix: tuple[int, ...] = ()
    #: While the task waits for a replica that holds its prefix: until when it may.
    hold_until_ms: float | None = None
    state: TaskState = TaskState.QUEUED
    #: Assigned by the queue on first admission; the global arrival order.
    seq: int = -1
    #: How many times the task was put back after its replica failed before any token.
    retries: int = 0
    #: The replicas those failures happened on (placement runs the task elsewhere).
    failed_on: frozenset[str] = frozenset()
    error: ErrorCode | None = None

    def transition(self, to: TaskState, error: ErrorCode | None = None) -> None:
        """Move to `to`, or raise `IllegalTransition` (terminal states never change)."""
        if to not in _ALLOWED.get(self.state, frozenset()):
            raise IllegalTransition(f"task {self.id}: {self.state.value} -> {to.value}")
        self.state = to
        if error is not None:
            self.error = error
