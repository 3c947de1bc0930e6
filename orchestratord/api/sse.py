"""Task events as Server-Sent Events, in the wire format a reader asked for: native
(`event: started|token|end|error`) or OpenAI chunks (chat or text completion).

A renderer turns one batch of events (everything that arrived since the reader last ran)
into one bytes write. It is the hot path: per token one JSON string encode (orjson) and one
bytes format; what is the same for every chunk of a task is encoded once, when the renderer
is made. Every frame carries its event's `id:` so `Last-Event-ID` resumes in either format.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from orchestrator_core.errors import ErrorCode
from orchestratord.api.errors import STATUS, openai_error
from orchestratord.api_models import EndEvent, ErrorEnvelope
from orchestratord.service.openai_requests import response_id, usage_of
from orchestratord.service.records import Door, TaskRecord
from orchestratord.service.streams import END, ERROR, STARTED, TOKEN, Event


class Renderer(Protocol):
    def __call__(self, events: list[Event]) -> bytes: ...

    def error(self, envelope: ErrorEnvelope) -> bytes:
        """A last frame outside the task's events (this reader fell behind the buffer)."""
        ...


_ROLE = b'{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

DONE = b"data: [DONE]\n\n"


def comment(text: str) -> bytes:
    """An SSE comment: ignored by clients, keeps the connection (and proxies) alive."""
    return b": %s\n\n" % text.encode()


class NativeEvents:
    def __call__(self, events: list[Event]) -> bytes:
        return _native(events)

    def error(self, envelope: ErrorEnvelope) -> bytes:
        return b"event: error\ndata: %s\n\n" % envelope.model_dump_json(exclude_none=True).encode()


def _native(events: list[Event]) -> bytes:
    out = []
    for event in events:
        kind, event_id = event[0], event[1]
        if kind == TOKEN:
            ids = b',"ids":[%s]' % ",".join(map(str, event[4])).encode() if event[4] else b""
            out.append(
                b'event: token\nid: %d\ndata: {"i":%d,"t":%s%s}\n\n'
                % (event_id, event[2], orjson.dumps(event[3]), ids)
            )
        else:
            name, data = _NATIVE[kind], event[2].model_dump_json(exclude_none=kind != STARTED)
            out.append(b"event: %s\nid: %d\ndata: %s\n\n" % (name, event_id, data.encode()))
    return b"".join(out)


_NATIVE = {STARTED: b"started", END: b"end", ERROR: b"error"}


class OpenAIChunks:
    """A task's events as OpenAI `chat.completion.chunk`s or `text_completion` chunks,
    ending with `data: [DONE]` (and a usage chunk first, when asked for)."""

    def __init__(self, rec: TaskRecord, *, include_usage: bool) -> None:
        self.chat = rec.door is not Door.OPENAI_COMPLETION
        self.include_usage = include_usage
        kind = b"chat.completion.chunk" if self.chat else b"text_completion"
        head = orjson.dumps(
            {"id": response_id(rec.door, rec.task.id), "created": rec.created, "model": rec.model}
        )
        # {"id":…,"created":…,"model":…,"object":…,"choices":[…
        self._head = b'%s,"object":"%s","choices":[' % (head[:-1], kind)
        self._text = b'{"index":0,"delta":{"content":%s},"finish_reason":null}]}\n\n'
        if not self.chat:
            self._text = b'{"index":0,"text":%s,"logprobs":null,"finish_reason":null}]}\n\n'

    def __call__(self, events: list[Event]) -> bytes:
        out = []
        head, text = self._head, self._text
        for event in events:
            kind, event_id = event[0], event[1]
            if kind == TOKEN:
                chunk = text % orjson.dumps(event[3])
                out.append(b"id: %d\ndata: %s%s" % (event_id, head, chunk))
            elif kind == STARTED:
                if self.chat:  # the assistant's turn opens with its role
                    out.append(b"id: %d\ndata: %s%s" % (event_id, head, _ROLE))
            elif kind == END:
                out.append(self._end(event_id, event[2]))
            else:
                out.append(self._error(event_id, event[2]))
        return b"".join(out)

    def _end(self, event_id: int, end: EndEvent) -> bytes:
        if end.finish_reason == "canceled":
            canceled = ErrorEnvelope.of(ErrorCode.CANCELED, "the task was canceled")
            return self._error(event_id, canceled)
        reason = orjson.dumps(end.finish_reason)
        empty = b'"delta":{}' if self.chat else b'"text":"","logprobs":null'
        last = b'{"index":0,%s,"finish_reason":%s}]}' % (empty, reason)
        frames = [b"data: %s%s\n\n" % (self._head, last)]
        if self.include_usage:
            usage = orjson.dumps(usage_of(end))
            frames.append(b'data: %s],"usage":%s}\n\n' % (self._head, usage))
        frames.append(b"id: %d\n%s" % (event_id, DONE))  # the id commits the whole ending
        return b"".join(frames)

    def _error(self, event_id: int, envelope: ErrorEnvelope) -> bytes:
        return self.error(envelope).replace(DONE, b"id: %d\n%s" % (event_id, DONE))

    def error(self, envelope: ErrorEnvelope) -> bytes:
        body = orjson.dumps(openai_error(envelope, STATUS[ErrorCode(envelope.code)]))
        return b"data: %s\n\n%s" % (body, DONE)


def renderer_for(rec: TaskRecord, accept: str, *, include_usage: bool = True) -> Renderer:
    """The format a reader asked for: OpenAI chunks for `Accept: ...; format=openai` (in
    the task's own flavour: chat, or text completion), else native events."""
    if "format=openai" in accept.replace(" ", ""):
        return OpenAIChunks(rec, include_usage=include_usage)
    return NativeEvents()
