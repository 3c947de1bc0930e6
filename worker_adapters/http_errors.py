"""Classifying HTTP engines' failures into the shared taxonomy (one place, every adapter)."""

from __future__ import annotations

import json

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import AdapterError
from worker_adapters.http_connection import EngineConnectionError


def engine_message(body: bytes) -> str:
    """The engine's own error text from the common JSON shapes, else the raw body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:500] or "no message"
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(data)


def status_error(status: int, body: bytes, engine: str) -> AdapterError:
    """An HTTP error status from an engine, as an AdapterError."""
    message = f"{engine} answered {status}: {engine_message(body)}"
    if status in (429, 503):  # overloaded or still loading: try again, maybe elsewhere
        return AdapterError(ErrorCode.REPLICA_EXHAUSTED, message, engine=engine)
    if status in (400, 404, 413, 422):
        return AdapterError(ErrorCode.INVALID_PARAMS, message, engine=engine)
    if status in (401, 403):
        return AdapterError(ErrorCode.UNAUTHORIZED, message, engine=engine, retriable=False)
    return AdapterError(ErrorCode.WORKER_RESET, message, engine=engine)


def connection_error(e: EngineConnectionError, engine: str) -> AdapterError:
    """A lost engine connection, as the retriable WORKER_RESET. The client is told what
    happened (`e.what`); the exception's own text (the engine's host and port, the OS
    error) goes to the operator's log only."""
    return AdapterError(
        ErrorCode.WORKER_RESET, f"{engine}: {e.what}", engine=engine, detail=f"{e!r}"
    )
