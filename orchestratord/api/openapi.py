"""The API contracts, generated: OpenAPI 3.1 for the data and control planes and the
config JSON Schema, from the pydantic models (the single source) and the operation table
below. `make regen` writes them to `contracts/`; a test keeps them diff-clean and keeps
the table equal to the daemon's routes.

    python -m orchestratord.api.openapi contracts/     # write
    python -m orchestratord.api.openapi --check contracts/
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestratord import api_models as api
from orchestratord.config import Config

ENVELOPE = "ErrorEnvelope"
SSE_EVENTS: dict[str, type[BaseModel]] = {
    "started": api.StartedEvent,
    "token": api.TokenEvent,
    "end": api.EndEvent,
    "error": api.ErrorEnvelope,
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    plane: str  # data | control
    summary: str
    request: type[BaseModel] | None = None
    #: status -> response model (None: no body); 4xx/5xx answer with the envelope
    ok: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    stream: bool = False
    content: str = "application/json"


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/v1/tasks",
        "data",
        "Admit a task into its pool's queue",
        api.TaskRequest,
        {202: api.AdmissionResponse},
        (400, 404, 413, 429, 503),
    ),
    Operation(
        "get",
        "/v1/tasks/{task_id}",
        "data",
        "A task's state (and output once ended)",
        None,
        {200: api.TaskStatus},
        (404,),
    ),
    Operation(
        "get",
        "/v1/tasks/{task_id}/stream",
        "data",
        "The task's SSE stream; Last-Event-ID resumes after that event",
        None,
        {200: None},
        (400, 404, 410),
        stream=True,
    ),
    Operation(
        "post",
        "/v1/tasks/{task_id}/cancel",
        "data",
        "Cancel a task (idempotent)",
        None,
        {204: None},
        (404,),
    ),
    Operation(
        "get",
        "/v1/sessions/{session_id}",
        "data",
        "Session affinity and KV warmth",
        None,
        {200: api.SessionInfo},
        (404,),
    ),
    Operation("delete", "/v1/sessions/{session_id}", "data", "Forget a session", None, {204: None}),
    Operation("get", "/v1/pools", "control", "Pools and their replicas", None, {200: api.PoolList}),
    Operation(
        "get", "/v1/pools/{pool_id}", "control", "One pool", None, {200: api.PoolInfo}, (404,)
    ),
    Operation(
        "get",
        "/v1/pools/{pool_id}/health",
        "control",
        "A pool's health",
        None,
        {200: api.PoolHealth},
        (404,),
    ),
    Operation(
        "post",
        "/v1/pools/{pool_id}/drain",
        "control",
        "Stop admitting; end what remains at the deadline",
        api.DrainRequest,
        {202: api.Accepted},
        (400, 404),
    ),
    Operation(
        "post",
        "/v1/pools/{pool_id}/reload",
        "control",
        "Swap the model atomically; rolled back on failure",
        api.ReloadRequest,
        {202: api.Accepted},
        (400, 404),
    ),
    Operation(
        "get",
        "/v1/capabilities",
        "control",
        "Engines, versions and context limits",
        None,
        {200: api.CapabilitiesResponse},
    ),
    Operation("get", "/healthz", "control", "Liveness", None, {200: None}),
    Operation(
        "get", "/readyz", "control", "Readiness: a replica is Ready", None, {200: None}, (503,)
    ),
    Operation(
        "get", "/metrics", "control", "Prometheus metrics", None, {200: None}, content="text/plain"
    ),
    Operation("get", "/openapi.json", "control", "This API's OpenAPI document", None, {200: None}),
)

_BACKPRESSURE_HEADERS = {
    "Retry-After": {
        "description": "Seconds to wait (at least 1)",
        "schema": {"type": "integer", "minimum": 1},
    },
    "X-Backoff-Ms": {"description": "Suggested backoff in ms", "schema": {"type": "integer"}},
}
_CORRELATION = {
    "X-Correlation-Id": {
        "description": "Echoed, or assigned when absent",
        "schema": {"type": "string"},
    }
}


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    return dict(sorted(defs.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _sse_description() -> str:
    lines = ["Server-sent events, each `event: NAME`, `id: N`, `data: JSON`:"]
    lines += [f"- `{name}`: `{model.__name__}`" for name, model in SSE_EVENTS.items()]
    return "\n".join(lines)


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}".replace("{", "")
        .replace("}", "")
        .replace(".", "_"),
    }
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in ("task_id", "session_id", "pool_id")
        if f"{{{name}}}" in op.path
    ]
    params.append(
        {
            "name": "X-Correlation-Id",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
        }
    )
    if op.path == "/v1/tasks":
        params.append(
            {
                "name": "X-Tenant-Id",
                "in": "header",
                "required": False,
                "description": "Who the task is accounted to for fairness",
                "schema": {"type": "string"},
            }
        )
    if op.stream:
        params.append(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        )
    doc["parameters"] = params
    if op.request is not None:
        doc["requestBody"] = {
            "required": op.request is not api.DrainRequest,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    responses: dict[str, Any] = {}
    for status, model in op.ok.items():
        entry: dict[str, Any] = {"description": "OK", "headers": _CORRELATION}
        if op.stream:
            entry["description"] = _sse_description()
            entry["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
        elif model is not None:
            entry["content"] = {"application/json": {"schema": _ref(model)}}
        elif status != 204:
            entry["content"] = {
                op.content: {
                    "schema": {"type": "object"}
                    if op.content == "application/json"
                    else {"type": "string"}
                }
            }
        responses[str(status)] = entry
    for status in op.errors:
        headers = dict(_CORRELATION)
        if status in (429, 503):
            headers.update(
                _BACKPRESSURE_HEADERS
                if status == 429
                else {"Retry-After": _BACKPRESSURE_HEADERS["Retry-After"]}
            )
        responses[str(status)] = {
            "description": "Error",
            "headers": headers,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{ENVELOPE}"}}
            },
        }
    responses["500"] = {
        "description": "Internal error (never a traceback)",
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ENVELOPE}"}}},
    }
    doc["responses"] = responses
    return doc


def document(plane: str | None = None) -> dict[str, Any]:
    """The OpenAPI document of one plane, or of both."""
    ops = [op for op in OPERATIONS if plane is None or op.plane == plane]
    models: list[type[BaseModel]] = [api.ErrorEnvelope, *SSE_EVENTS.values()]
    for op in ops:
        models += [m for m in (op.request, *op.ok.values()) if m is not None]
    paths: dict[str, Any] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    title = {"data": "data plane", "control": "control plane", None: "API"}[plane]
    return {
        "openapi": "3.1.0",
        "info": {"title": f"orchestratord {title}", "version": api.API_VERSION},
        "paths": paths,
        "components": {
            "schemas": _schemas(list(dict.fromkeys(models))),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=100)


def artifacts() -> dict[str, str]:
    """Relative path -> file content, for everything `make regen` writes."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestratord config"
    return {
        "openapi/data.yaml": _yaml(document("data")),
        "openapi/control.yaml": _yaml(document("control")),
        "config-schema/config.schema.json": json.dumps(schema, indent=2, sort_keys=True) + "\n",
    }


def main(argv: list[str]) -> int:
    check = "--check" in argv
    root = Path(next((a for a in argv if not a.startswith("--")), "contracts"))
    stale: list[Path] = []
    for rel, content in artifacts().items():
        path = root / rel
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    for path in stale:
        print(f"stale: {path} (run `make regen`)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
