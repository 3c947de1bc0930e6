"""What every handler shares: the correlation id, JSON bodies in (validated into the API
models, with errors naming the field) and JSON responses out."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator_core.errors import ErrorCode
from orchestratord.api.bodies import BODIES
from orchestratord.api_models import TOKEN_PATTERN
from orchestratord.principals import Principal
from orchestratord.service import Refusal

CORRELATION = "X-Correlation-Id"
#: The correlation id again, where OpenAI's SDKs read a request's id (`request_id` on
#: their responses and errors), so a user's report names what our logs carry.
REQUEST_ID = "x-request-id"
#: The task an answer is about (a task's creation, an OpenAI completion).
TASK_ID = "X-Task-Id"
#: The request's correlation id (echoed or assigned by the middleware).
CID: web.RequestKey[str] = web.RequestKey("cid", str)

M = TypeVar("M", bound=BaseModel)

#: An aiohttp request handler, as middlewares see it.
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
#: Who is asking (set by `api.access` on every `/v1/` route).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)


TENANT = "X-Tenant-Id"
_TOKEN = re.compile(TOKEN_PATTERN)
MAX_CORRELATION_CHARS = 128
MAX_TENANT_CHARS = 64


def checked_header(request: web.Request, name: str, limit: int) -> str | None:
    """A client-chosen identifier header, or None when absent; a Refusal naming the header
    when it is longer than `limit` or holds anything but letters, digits and `._:@/+=-`."""
    value = request.headers.get(name)
    if value is None:
        return None
    if len(value) > limit or not _TOKEN.fullmatch(value):
        raise Refusal(
            ErrorCode.INVALID_PARAMS,
            f"{name} must be 1-{limit} characters of letters, digits and ._:@/+=-",
            field=name,
        )
    return value


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_of(request: web.Request) -> str | None:
    """The client's W3C `traceparent`, if it is one (an invalid one is ignored, as the
    W3C Trace Context spec says)."""
    value = request.headers.get("traceparent")
    return value if value is not None and _TRACEPARENT.fullmatch(value) else None


def principal_of(request: web.Request) -> Principal:
    """Who is asking; tasks are accounted to its tenant."""
    return request[PRINCIPAL]


def json_response(model: BaseModel, status: int = 200) -> web.Response:
    """`model` as a JSON answer, its body bytes (so its length is known: `api.answers`)."""
    body = model.__pydantic_serializer__.to_json(model)
    return web.Response(body=body, status=status, content_type="application/json")


async def parse(request: web.Request, model: type[M], *, optional: bool = False) -> M:
    """The body as `model`; a Refusal naming the offending field otherwise."""
    body = await request.app[BODIES].read(request)
    if not body and optional:
        body = b"{}"
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            raise Refusal(ErrorCode.INVALID_PARAMS, f"malformed JSON: {err['msg']}") from None
        loc = ".".join(str(p) for p in err["loc"]) or "(body)"
        raise Refusal(ErrorCode.INVALID_PARAMS, f"{loc}: {err['msg']}", field=loc) from None
