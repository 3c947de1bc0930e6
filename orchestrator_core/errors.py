"""The error taxonomy shared by every layer (codes from design/API.md)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, typed error codes; clients switch on these, never on messages."""

    INVALID_PARAMS = "INVALID_PARAMS"
    UNKNOWN_MODEL = "UNKNOWN_MODEL"
    ADMISSION_REJECT = "ADMISSION_REJECT"
    QUEUE_FULL_DROP_LRU = "QUEUE_FULL_DROP_LRU"
    POOL_UNREADY = "POOL_UNREADY"
    POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
    REPLICA_EXHAUSTED = "REPLICA_EXHAUSTED"
    DEADLINE_UNMET = "DEADLINE_UNMET"
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    WORKER_RESET = "WORKER_RESET"
    CANCELED = "CANCELED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL = "INTERNAL"
    #: A task that had streamed tokens when the daemon died (it cannot rerun unseen).
    DAEMON_RESTART = "DAEMON_RESTART"
    #: The task store cannot write: nothing new is accepted, nothing accepted is lost.
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    #: The daemon is at its connection limit: try again shortly.
    OVERLOADED = "OVERLOADED"
    #: The task existed but its record was forgotten (retention or the memory budget).
    EXPIRED = "EXPIRED"
    #: Events a reader needs are no longer retained: it fell behind, or resumed too late.
    STREAM_GAP = "STREAM_GAP"
    #: An operator drained the pool: it takes no new work until resumed (not retriable:
    #: waiting does not help; another pool, or the operator, does).
    POOL_DRAINING = "POOL_DRAINING"
    #: The caller's key is past one of its limits (concurrent, queued, tokens per minute).
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    #: What is asked clashes with the state of its target (a pool already reloading; key
    #: changes on a daemon without a key file).
    CONFLICT = "CONFLICT"
    #: A state-changing request whose body is not declared `application/json`.
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    #: This daemon stands by (another leads the shared store): ask the leader it names.
    NOT_LEADER = "NOT_LEADER"


#: Codes a client may retry unchanged (possibly after a backoff).
RETRIABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.ADMISSION_REJECT,
        ErrorCode.QUEUE_FULL_DROP_LRU,
        ErrorCode.POOL_UNREADY,
        ErrorCode.POOL_UNAVAILABLE,
        ErrorCode.REPLICA_EXHAUSTED,
        ErrorCode.DECODE_TIMEOUT,
        ErrorCode.WORKER_RESET,
        ErrorCode.DAEMON_RESTART,
        ErrorCode.STORE_UNAVAILABLE,
        ErrorCode.OVERLOADED,
        ErrorCode.QUOTA_EXCEEDED,
        ErrorCode.NOT_LEADER,
    }
)


class OrchestratorError(Exception):
    """An error that carries its taxonomy code; raised by the core and by adapters."""

    def __init__(self, code: ErrorCode, message: str, *, retriable: bool | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retriable = code in RETRIABLE if retriable is None else retriable

    def __repr__(self) -> str:
        return f"OrchestratorError({self.code.value}, {self.message!r})"
