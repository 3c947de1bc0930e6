"""Who may do what, enforced once for every route (after the Kubernetes API server's
filter chain: authentication, then authorization, then the handler; audit around it).

1. **Browsers cannot drive the daemon** (always on, keys or not): a state-changing request
   must declare its body `application/json` (the upload route: `multipart/form-data`), a
   browser's cross-origin `Origin` is refused, and a daemon bound to loopback answers only
   to loopback `Host` names — which closes DNS rebinding.
2. **Authentication**: with keys configured, `/v1/` needs `Authorization: Bearer <key>`;
   the key names the principal. Without keys (loopback only, or `--insecure`), everyone is
   an admin of the tenant `X-Tenant-Id` names.
3. **Tenant**: a key's own; `X-Tenant-Id` is honoured only from operator and admin keys
   (acting on behalf of a tenant) — any other key naming another tenant is refused.
4. **Authorization**: the route's roles (`operations.OPERATIONS`); a route with no rule is
   refused to all but admins.
5. **Audit**: every control-plane action writes one `audit` log line (who, what, result).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

import structlog
from aiohttp import hdrs, web

from orchestrator_core.errors import ErrorCode
from orchestratord.api.http import (
    MAX_TENANT_CHARS,
    PRINCIPAL,
    TENANT,
    Handler,
    Middleware,
    checked_header,
)
from orchestratord.api.operations import ADMIN, OPERATIONS, Access, Operation
from orchestratord.keyring import KeyRing
from orchestratord.principals import Principal, open_principal
from orchestratord.service import Refusal

audit = structlog.get_logger("orchestratord.audit")

_CHANGES_STATE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_BY_ROUTE: dict[tuple[str, str], Operation] = {
    (op.method.upper(), op.path): op for op in OPERATIONS
}
_UPLOADS = frozenset(op.path for op in OPERATIONS if op.upload)
_SIMPLE = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
#: What a state-changing request's body must be: {upload route?: content type}.
_BODY_TYPE = {False: "application/json", True: "multipart/form-data"}


def is_loopback(host: str) -> bool:
    """Whether a bind address (or a `Host` name) is this machine only."""
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _forbidden(message: str, field: str | None = None) -> Refusal:
    return Refusal(ErrorCode.FORBIDDEN, message, field=field)


@lru_cache(maxsize=256)  # per request: the few Host values clients send, parsed once
def _loopback_host(header: str) -> bool:
    return is_loopback(urlsplit(f"//{header}").hostname or "")


def _browser_guard(request: web.Request, loopback: bool) -> None:
    if loopback and not _loopback_host(request.host):
        raise _forbidden(
            f"this daemon listens on loopback and answers only loopback names, not "
            f"Host {request.host!r}", "Host",
        )  # fmt: skip
    if request.method not in _CHANGES_STATE:
        return
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        raise _forbidden("cross-origin requests that change state are refused", "Origin")
    upload = request.path in _UPLOADS
    declared = request.content_type if hdrs.CONTENT_TYPE in request.headers else None
    # what a browser may send cross-site without asking first (CORS "simple" requests)
    simple = declared in _SIMPLE and not (upload and declared == "multipart/form-data")
    if simple or (request.body_exists and declared != _BODY_TYPE[upload]):
        raise Refusal(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the body as {_BODY_TYPE[upload]} (Content-Type: {declared or 'none'})",
            field="Content-Type",
        )


def _operation(request: web.Request) -> Operation | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    return _BY_ROUTE.get((request.method, resource.canonical))


def _key_holder(request: web.Request, keys: KeyRing) -> Principal:
    """Whose key the request presents; 401 before anything else is looked at."""
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, presented = header.partition(" ")
    principal = keys.authenticate(presented) if scheme.lower() == "bearer" else None
    if principal is None:
        raise Refusal(
            ErrorCode.UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <key>)"
        )
    return principal


def _authenticate(request: web.Request, keys: KeyRing, needed: Access) -> Principal:
    if not keys.enabled:
        return open_principal(checked_header(request, TENANT, MAX_TENANT_CHARS) or "default")
    principal = _key_holder(request, keys)
    on_behalf = checked_header(request, TENANT, MAX_TENANT_CHARS)
    if on_behalf is not None and on_behalf != principal.tenant:
        if not principal.sees_all:
            raise _forbidden(
                f"key {principal.who} belongs to tenant {principal.tenant!r}; only operator "
                "and admin keys act on behalf of another tenant", TENANT,
            )  # fmt: skip
        principal = dataclasses.replace(principal, tenant=on_behalf)
    if needed and not any(principal.may(role) for role in needed):
        roles = " or ".join(role.value for role in needed)
        raise _forbidden(f"key {principal.who} lacks the role this needs ({roles})")
    return principal


def access_control(keys: KeyRing, *, loopback: bool) -> Middleware:
    """The middleware; `loopback`: the daemon is bound to a loopback address."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        _browser_guard(request, loopback)
        op = _operation(request)
        if op is None:
            if not request.path.startswith("/v1/") or not keys.enabled:
                return await handler(request)  # unrouted (404, 405), or test-only endpoints
            if request.match_info.http_exception is not None:
                # with keys, an unknown /v1/ path or method answers 404/405 to a known key
                _key_holder(request, keys)
                return await handler(request)
            needed = ADMIN
        elif not op.access:  # public: health, readiness, metrics, the OpenAPI document
            return await handler(request)
        else:
            needed = op.access
        principal = request[PRINCIPAL] = _authenticate(request, keys, needed)
        if op is None or not op.audited:
            return await handler(request)
        result: object = "error"
        try:
            response = await handler(request)
            result = response.status
            return response
        except Refusal as refusal:
            result = refusal.code.value
            raise
        finally:
            audit.info("audit", who=principal.who, action=f"{op.method} {request.path}",
                       result=result)  # fmt: skip

    return middleware
