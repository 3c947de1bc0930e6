"""The API contracts, generated: OpenAPI 3.1 for the data plane, the control plane and the
OpenAI-compatible door, and the config JSON Schema, from the pydantic models (the single
source) and the operation table (`api.operations`). `make regen` writes them to
`contracts/`; a test keeps them diff-clean and keeps the table equal to the daemon's routes.

    python -m orchestratord.api.openapi contracts/     # write
    python -m orchestratord.api.openapi --check contracts/
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from orchestratord import api_models as api
from orchestratord.api.http import MAX_CORRELATION_CHARS
from orchestratord.api.operations import OPERATIONS, Operation
from orchestratord.api_models import TOKEN_PATTERN
from orchestratord.config import Config

PLANES = {"data": "data plane", "control": "control plane", "openai": "OpenAI-compatible door"}
SSE_EVENTS: dict[str, type[BaseModel]] = {
    "started": api.StartedEvent,
    "token": api.TokenEvent,
    "metrics": api.MetricsEvent,
    "end": api.EndEvent,
    "error": api.ErrorEnvelope,
}


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


#: One server-sent event, as a client's parser sees it (its `data` is the JSON the
#: description names); the stream is a sequence of these.
_SSE_EVENT = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


_PATH_PARAMETER = re.compile(r"\{(\w+)\}")


def _schemas(models: list[type[BaseModel]]) -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    return dict(sorted(defs.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _sse_description(op: Operation) -> str:
    if op.plane == "openai":
        return (
            "JSON, or with `stream: true` server-sent events: `data:` OpenAI chunks, each "
            "with an `id:`, a usage chunk when `stream_options.include_usage`, then "
            "`data: [DONE]`"
        )
    lines = ["Server-sent events, each `event: NAME`, `id: N`, `data: JSON`:"]
    lines += [f"- `{name}`: `{model.__name__}`" for name, model in SSE_EVENTS.items()]
    lines.append("While the task is queued, SSE comments give its position.")
    return "\n".join(lines)


def _operation(op: Operation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}".replace("{", "")
        .replace("}", "")
        .replace(".", "_"),
    }
    string = {"type": "string"}
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": string}
        for name in _PATH_PARAMETER.findall(op.path)
    ]
    params.append({
        "name": "X-Correlation-Id", "in": "header", "required": False,
        "schema": {"type": "string", "pattern": f"^{TOKEN_PATTERN}$",
                   "maxLength": MAX_CORRELATION_CHARS},
    })  # fmt: skip
    for name, description in op.headers:
        schema = {"type": "string", "pattern": "^[0-9]+$"} if name == "Last-Event-ID" else string
        params.append(
            {"name": name, "in": "header", "required": False, "description": description,
             "schema": schema}
        )  # fmt: skip
    for name, description in op.query:
        params.append(
            {"name": name, "in": "query", "required": False, "description": description,
             "schema": string}
        )  # fmt: skip
    doc["parameters"] = params
    if op.upload:
        form = {
            "type": "object", "required": ["purpose", "file"],
            "properties": {"purpose": {"type": "string", "enum": ["batch"]},
                           "file": {"type": "string", "format": "binary"}},
        }  # fmt: skip
        doc["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": form}},
        }
    if op.request is not None:
        doc["requestBody"] = {
            "required": op.request is not api.DrainRequest,
            "content": {"application/json": {"schema": _ref(op.request)}},
        }
    responses: dict[str, Any] = {}
    for status, model in op.ok.items():
        entry: dict[str, Any] = {"description": "OK", "headers": _CORRELATION}
        content: dict[str, Any] = {}
        if model is not None:
            content["application/json"] = {"schema": _ref(model)}
        if status in op.sse:
            entry["description"] = _sse_description(op)
            content["text/event-stream"] = {"schema": _SSE_EVENT}
        elif model is None and status != 204:
            plain = op.content != "application/json"
            content[op.content] = {"schema": {"type": "string" if plain else "object"}}
        if content:
            entry["content"] = content
        if status in op.links:
            entry["links"] = {
                name: {"operationId": target, "parameters": params}
                for name, (target, params) in op.links[status].items()
            }
        responses[str(status)] = entry
    error = {"application/json": {"schema": _ref(op.error)}}
    # every operation: a malformed X-Correlation-Id (400); past the connection limit, or
    # with the answer budget full (503); a Host that is not loopback's on a loopback daemon
    # (403); a head too large (431).
    # With keys: no key (401), a key without the role (403). State changes: a body that is
    # not JSON (415), or that is too slow to arrive (408).
    always = {400, 403, 431, 503}
    if op.access:
        always.add(401)
        doc["security"] = [{"bearer": []}]
    else:
        doc["security"] = []
    if op.method != "get":
        always |= {408, 415}
    for status in sorted(always | set(op.errors)):
        headers = dict(_CORRELATION)
        if status == 429:
            headers.update(_BACKPRESSURE_HEADERS)
        elif status == 503:
            headers["Retry-After"] = _BACKPRESSURE_HEADERS["Retry-After"]
        responses[str(status)] = {"description": "Error", "headers": headers, "content": error}
    responses["500"] = {"description": "Internal error (never a traceback)", "content": error}
    doc["responses"] = responses
    return doc


def document(plane: str | None = None) -> dict[str, Any]:
    """The OpenAPI document of one plane, or of all."""
    ops = [op for op in OPERATIONS if plane is None or op.plane == plane]
    models: list[type[BaseModel]] = [*SSE_EVENTS.values()]
    for op in ops:
        models += [m for m in (op.request, op.error, *op.ok.values()) if m is not None]
    paths: dict[str, Any] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op)
    title = PLANES[plane] if plane is not None else "API"
    return {
        "openapi": "3.1.0",
        "info": {"title": f"orchestratord {title}", "version": api.API_VERSION},
        "paths": paths,
        "components": {
            "schemas": _schemas(list(dict.fromkeys(models))),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


class _Plain(yaml.SafeDumper):
    """Writes shared parts out in full: contracts are read and diffed, not parsed only."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Plain, sort_keys=False, width=100)


def artifacts() -> dict[str, str]:
    """Relative path -> file content, for everything `make regen` writes."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "orchestratord config"
    return {
        **{f"openapi/{plane}.yaml": _yaml(document(plane)) for plane in PLANES},
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
