"""The service: what the daemon does, in domain terms, with no HTTP in it.

Stages, each importing only the ones after it:
`orchestrator` (the facade the API calls) → `admission` / `views` → `dispatcher` (one per
pool: queue, timers, leases, replica events) → `runner` (relays one engine stream) →
`tasks` (the task book and its single terminal path, `finish`) → `streams` (SSE frames).
"""

from orchestratord.service.orchestrator import Orchestrator
from orchestratord.service.refusal import Refusal
from orchestratord.service.streams import StreamGap

__all__ = ["Orchestrator", "Refusal", "StreamGap"]
