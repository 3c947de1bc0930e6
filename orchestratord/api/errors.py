"""Errors become HTTP here, once (after TGI's `impl From<InferError> for (StatusCode, ...)`):
the one `ErrorCode → status` table, the headers each status carries, and the two bodies —
our envelope, or OpenAI's `{"error": {message, type, code, param}}` (with our code in
`code`) on the OpenAI-compatible door.

Everything below the API raises typed errors (`Refusal`); no other module picks a status.
"""

from __future__ import annotations

from math import ceil
from typing import Any

import orjson
from aiohttp import web

from orchestrator_core.errors import ErrorCode
from orchestratord.api_models import ErrorEnvelope
from orchestratord.service import Refusal

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.DEADLINE_UNMET: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.ADMISSION_REJECT: 429,
    ErrorCode.QUEUE_FULL_DROP_LRU: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.POOL_UNAVAILABLE: 503,
    ErrorCode.POOL_UNREADY: 503,
    ErrorCode.REPLICA_EXHAUSTED: 503,
    ErrorCode.WORKER_RESET: 502,
    ErrorCode.DECODE_TIMEOUT: 504,
    ErrorCode.CANCELED: 409,
    ErrorCode.DAEMON_RESTART: 503,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.EXPIRED: 410,
    ErrorCode.STREAM_GAP: 410,
    ErrorCode.POOL_DRAINING: 503,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.NOT_LEADER: 503,
}

#: aiohttp's own refusals (routing, body size, method) in the taxonomy.
_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.INVALID_PARAMS,
    503: ErrorCode.OVERLOADED,
}


def code_for_http(status: int) -> ErrorCode:
    """The code of an error aiohttp raised itself (404 route, 405 method, 413 body...)."""
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    return ErrorCode.INVALID_PARAMS if status < 500 else ErrorCode.INTERNAL


def _retry_after(ms: int | None) -> str:
    """`Retry-After` in whole seconds, at least 1."""
    return str(max(1, ceil((ms or 1000) / 1000)))


def headers_for(
    status: int, retry_after_ms: int | None = None, *, retriable: bool = True
) -> dict[str, str]:
    """A 429 says when to retry (`Retry-After`, and `X-Backoff-Ms` in ms); so does a
    retriable 503 — a drained pool's does not, as waiting will not lift it."""
    if status == 429:
        ms = retry_after_ms or 1000
        return {"Retry-After": _retry_after(ms), "X-Backoff-Ms": str(ms)}
    if status == 503 and retriable:
        return {"Retry-After": _retry_after(retry_after_ms)}
    if status == 401:
        return {"WWW-Authenticate": "Bearer"}
    return {}


#: OpenAI's error `type` for the statuses that have a narrower one than a client error's
#: `invalid_request_error` (its SDKs pick the exception class by status).
_OPENAI_TYPES = {
    401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    429: "rate_limit_error",
}  # fmt: skip


def openai_error(envelope: ErrorEnvelope, status: int) -> dict[str, Any]:
    """The envelope in OpenAI's error shape."""
    error_type = _OPENAI_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {
        "error": {
            "message": envelope.message, "type": error_type, "code": envelope.code,
            "param": envelope.field,
        }
    }  # fmt: skip


def _sdk_retry_headers(
    headers: dict[str, str], retriable: bool, retry_after_ms: int | None
) -> None:
    """Add what OpenAI's SDKs read before their own rules: `x-should-retry` — without it
    they retry every 409, 429 and 5xx, so a request whose task an operator canceled would
    come back as a new task — and `retry-after-ms`, finer than `Retry-After`'s seconds."""
    headers["x-should-retry"] = "true" if retriable else "false"
    if "Retry-After" in headers:
        headers["retry-after-ms"] = str(retry_after_ms or 1000)


def error_response(
    envelope: ErrorEnvelope,
    status: int,
    retry_after_ms: int | None = None,
    *,
    openai: bool = False,
) -> web.Response:
    headers = headers_for(status, retry_after_ms, retriable=envelope.retriable)
    if openai:
        body = orjson.dumps(openai_error(envelope, status))
        _sdk_retry_headers(headers, envelope.retriable, retry_after_ms)
    else:
        body = envelope.model_dump_json(exclude_none=True).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def refusal_response(refusal: Refusal, *, openai: bool = False) -> web.Response:
    envelope = ErrorEnvelope.of(
        refusal.code, refusal.message, retriable=refusal.retriable, field=refusal.field,
        pool_id=refusal.pool_id, retry_after_ms=refusal.retry_after_ms,
        policy_label=refusal.policy_label,
    )  # fmt: skip
    return error_response(envelope, STATUS[refusal.code], refusal.retry_after_ms, openai=openai)


def stream_gap(first_retained: int, message: str) -> ErrorEnvelope:
    """`STREAM_GAP`: the events asked for left the stream's buffer; `first_retained` says
    where a reader may read on from."""
    envelope = ErrorEnvelope.of(ErrorCode.STREAM_GAP, message)
    envelope.first_retained = first_retained
    return envelope


def gone(first_retained: int, message: str) -> web.Response:
    """410: a stream read from before its oldest retained event (from its start, or a
    `Last-Event-ID` resume after events that left the buffer)."""
    return error_response(stream_gap(first_retained, message), 410)
