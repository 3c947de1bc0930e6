"""OpenTelemetry traces: one trace per task (.specs/39-observability.md).

    task                      admission → the end; the client's `traceparent` is its parent
    ├── admission             the checks, with the queue position and predicted start
    ├── queue                 admission → dispatch: priority, tenant, position
    ├── placement             the decision: replica, outcome
    ├── engine                dispatch → the end: replica, engine, first token, tokens, outcome
    └── stream                one per reader: events sent, format

Off unless the standard variables ask for it (`OTEL_TRACES_EXPORTER`, or an
`OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`): then spans go to OTLP over HTTP, configured by the
other `OTEL_*` variables as the SDK reads them. Off, every hook is one `is None` test — and a
client's `traceparent` still reaches the engine unchanged. Like OpenTelemetry's own API this
keeps one process-wide tracer (`configure`).

The engine request carries the `engine` span's `traceparent` (HTTP engines get the header).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


@dataclass(slots=True)
class TaskSpans:
    """The open spans of one task."""

    task: Span
    queue: Span
    engine: Span | None = None


def configure(provider: TracerProvider | None) -> None:
    """Trace to `provider` from now on (None: off)."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("orchestratord")


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered (the daemon is stopping)."""
    if _provider is not None:
        _provider.shutdown()


def configure_from_env() -> bool:
    """Turn tracing on if the standard `OTEL_*` variables ask for an exporter."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter in ("", "none") and not endpoint:
        configure(None)
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()  # service name etc. from OTEL_SERVICE_NAME / _RESOURCE_ATTRIBUTES
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    configure(provider)
    return True


def admitted(
    traceparent: str | None, attributes: dict[str, Any], queue: dict[str, Any]
) -> TaskSpans | None:
    """A task was admitted: its trace (continuing the client's `traceparent`) begins."""
    if _tracer is None:
        return None
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    task = _tracer.start_span("task", context=parent, attributes=attributes)
    inside = trace.set_span_in_context(task)
    with _tracer.start_as_current_span("admission", context=inside, attributes=queue):
        pass
    return TaskSpans(task, _tracer.start_span("queue", context=inside, attributes=queue))


def queued(spans: TaskSpans | None, position: int, predicted_start_ms: int) -> None:
    """Where the task entered its queue (unless it was dispatched at once)."""
    if spans is not None and spans.queue.is_recording():
        spans.queue.set_attribute("position", position)
        spans.queue.set_attribute("predicted_start_ms", predicted_start_ms)


def started(
    spans: TaskSpans | None, replica_id: str, engine: str, retries: int, reason: str
) -> str | None:
    """The task left the queue for `replica_id` (chosen for `reason`): the `traceparent`
    its engine gets."""
    if _tracer is None or spans is None:
        return None
    spans.queue.end()
    inside = trace.set_span_in_context(spans.task)
    placed = {"replica_id": replica_id, "outcome": "placed", "reason": reason}
    with _tracer.start_as_current_span("placement", context=inside, attributes=placed):
        pass
    spans.engine = _tracer.start_span(
        "engine", context=inside,
        attributes={"replica_id": replica_id, "engine": engine, "retries": retries},
    )  # fmt: skip
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(spans.engine))
    return carrier.get("traceparent")


def first_token(spans: TaskSpans | None, ttft_ms: float) -> None:
    if spans is not None and spans.engine is not None:
        spans.engine.add_event("first_token")
        spans.engine.set_attribute("ttft_ms", round(ttft_ms, 3))


def finished(
    spans: TaskSpans | None, state: str, error: str | None, tokens_in: int | None,
    tokens_out: int,
) -> None:  # fmt: skip
    """The task ended: its spans close, with how it ended."""
    if spans is None:
        return
    for span in (spans.engine, spans.task):
        if span is None:
            continue
        span.set_attribute("state", state)
        span.set_attribute("tokens_out", tokens_out)
        if tokens_in is not None:
            span.set_attribute("tokens_in", tokens_in)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
    if spans.engine is None:  # it never left the queue
        spans.queue.end()


def reader(spans: TaskSpans | None, render: str) -> Span | None:
    """A stream reader attached: its `stream` span (end it when the reader goes)."""
    if _tracer is None or spans is None:
        return None
    inside = trace.set_span_in_context(spans.task)
    return _tracer.start_span("stream", context=inside, attributes={"format": render})


def log_ids(spans: TaskSpans | None) -> dict[str, str]:
    """`trace_id` and `span_id` (of the task span) for the task's log lines."""
    if spans is None:
        return {}
    context = spans.task.get_span_context()
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
