"""`Refusal`: the service declines a request before any stream starts.

The service says *what* went wrong and with which context; the API layer alone turns that
into an HTTP status, headers and an error envelope (`orchestratord.api.errors`).
"""

from __future__ import annotations

from orchestrator_core.errors import ErrorCode, OrchestratorError


class Refusal(OrchestratorError):
    """A typed "no": unknown model or task, bad parameters, a full queue, a pool that cannot
    serve, a daemon shutting down."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        pool_id: str | None = None,
        retry_after_ms: int | None = None,
        policy_label: str | None = None,
    ) -> None:
        super().__init__(code, message)
        #: The offending request field, as a dotted path.
        self.field = field
        self.pool_id = pool_id
        #: How long the client should wait before retrying (backpressure).
        self.retry_after_ms = retry_after_ms
        #: The queue policy that refused (`reject` | `drop-lru`).
        self.policy_label = policy_label
