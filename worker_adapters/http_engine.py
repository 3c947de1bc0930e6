"""What every HTTP streaming engine adapter shares: one lean client whose connections are
reused where the engine keeps them alive (`http_client`), JSON probes, and SSE-over-POST
with failures classified into the shared taxonomy. Engine modules add only their protocol:
a `Call` (path, request body, and an `EventMapper` from the engine's events to ours).

A stream's body goes through one path whichever way it is read: SSE-decoded, each event's
JSON parsed, mapped, handed to a sink (`_BodyEvents`), the events of one read together.
`relay` runs that inside the engine connection's callback as each read arrives; `stream`
runs it on the reads it pulls and yields what the sink collected.

llama-server closes every connection after a stream although it advertises keep-alive: its
own adapter does not pool (`keep_alive=False`: the next connection is opened ahead
instead); an OpenAI-compatible pool in front of it relies on the client's resend of a
request whose pooled connection was found closed. A request to a replica that was stopped
meanwhile (its client closed) is a connection failure, like any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import (
    AdapterError,
    End,
    EventSink,
    GenerateRequest,
    StreamEvent,
)
from worker_adapters.http_client import HttpClient
from worker_adapters.http_connection import EngineConnectionError, NoAnswerInTime, Response
from worker_adapters.http_errors import connection_error, status_error
from worker_adapters.sse import Oversized, SseDecoder

DONE = b"[DONE]"
JSON = {"Content-Type": "application/json"}


class EventMapper(Protocol):
    """One engine protocol's stream events (parsed JSON) as ours."""

    def feed(self, event: Any) -> Sequence[StreamEvent]:
        """The events one engine event carries (mostly one token, or none); an `End`,
        always last among them, ends the stream. Raises AdapterError for an in-stream
        error."""
        ...

    def end(self) -> End:
        """The stream ended (`[DONE]`, or the body's end) without an `End` so far: build
        it from what was seen, or raise the engine's `ended_early` error."""
        ...


@dataclass(frozen=True, slots=True)
class Call:
    """One streamed generation request: where it goes, what it sends, how to read it."""

    path: str
    body: Mapping[str, Any]
    events: EventMapper


class _BodyEvents:
    """A streamed body, read by read, as events handed to a sink."""

    __slots__ = ("_decoder", "_events", "_oversized", "_sink", "done")

    def __init__(
        self, oversized: Callable[[Oversized], Any], events: EventMapper, sink: EventSink
    ) -> None:
        self._oversized, self._events, self._sink = oversized, events, sink
        self._decoder = SseDecoder()
        #: `[DONE]` came: the connection may be kept once the body's last bytes are read.
        self.done = False

    def feed(self, body: bytes) -> bool:
        """Whether the stream is over for the sink (its `End` came, or it declined)."""
        data = self._decoder.feed(body)
        return self._hand_over(data) if data else False

    def end(self) -> None:
        """The body ended: what the decoder still holds, then the stream's `End`."""
        if not self._hand_over(self._decoder.end()):
            self._sink([self._events.end()])

    def _hand_over(self, data: list[bytes | Oversized]) -> bool:
        """The events in `data` (one read's), handed to the sink together; whether the
        stream is over for it. Those before an error still reach it, then the error."""
        events: list[StreamEvent] = []
        over = False
        feed = self._events.feed
        try:
            for one in data:
                if one == DONE:
                    self.done = over = True
                    events.append(self._events.end())
                    break
                chunk = self._oversized(one) if isinstance(one, Oversized) else orjson.loads(one)
                if mapped := feed(chunk):
                    events += mapped
                    if isinstance(mapped[-1], End):
                        over = True
                        break
        except Exception:
            if events:
                self._sink(events)
            raise
        if not events:
            return False
        return not self._sink(events) or over


class HttpEngine:
    engine = "http"

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        probe_timeout_s: float = 2.0,
        keep_alive: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._probe_timeout_s = probe_timeout_s
        self._client = HttpClient(self.base_url, headers=headers, keep_alive=keep_alive)

    async def close(self) -> None:
        await self._client.close()

    async def _get(self, path: str) -> tuple[int, bytes]:
        """`GET path` within the probe timeout: (status, body). Raises
        EngineConnectionError, a timeout included."""
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                r = await self._client.request("GET", path)
                try:
                    return r.status, await r.read()
                finally:
                    self._client.release(r)
        except TimeoutError as e:
            raise NoAnswerInTime(f"GET {path}: none within {self._probe_timeout_s:g} s") from e

    async def _get_json(self, path: str) -> Any:
        try:
            status, body = await self._get(path)
        except EngineConnectionError as e:
            raise connection_error(e, self.engine) from e
        if status != 200:
            raise status_error(status, body, self.engine)
        return orjson.loads(body)

    async def _probe(self, path: str) -> bool:
        """Whether `GET path` answers 200 (readiness)."""
        try:
            return (await self._get(path))[0] == 200
        except EngineConnectionError:
            return False

    async def _metrics(self, *names: str) -> dict[str, float]:
        """Values of unlabelled (or summed labelled) samples from the engine's Prometheus
        `/metrics`; names it does not export are absent."""
        try:
            status, body = await self._get("/metrics")
        except EngineConnectionError:
            return {}
        if status != 200:
            return {}
        found: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            name, _, rest = line.partition(" ")
            base = name.split("{", 1)[0]
            if base in names:
                try:
                    found[base] = found.get(base, 0.0) + float(rest.split()[0])
                except (ValueError, IndexError):
                    continue
        return found

    def _call(self, request: GenerateRequest) -> Call:
        """The engine's streamed generation request for `request` (each engine's own)."""
        raise NotImplementedError

    async def relay(self, request: GenerateRequest, sink: EventSink) -> None:
        """Each read of the engine's stream becomes events for `sink` inside the
        connection's callback: no task step per read."""
        call = self._call(request)
        async with self._exchange(call, request.traceparent, sink) as (response, body):
            if not await response.deliver(body.feed):
                body.end()

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamEvent, None]:
        events: list[StreamEvent] = []

        def collect(read: list[StreamEvent]) -> bool:
            events.extend(read)
            return True

        call = self._call(request)
        async with self._exchange(call, request.traceparent, collect) as (response, body):
            over = False
            while not over:
                if read := await response.chunk():
                    over = body.feed(read)
                else:
                    body.end()
                    over = True
                for event in events:
                    yield event
                events.clear()

    @asynccontextmanager
    async def _exchange(
        self, call: Call, traceparent: str | None, sink: EventSink
    ) -> AsyncIterator[tuple[Response, _BodyEvents]]:
        """POST `call` and hand over its response once it answered 200. HTTP errors,
        dropped connections and malformed events raise AdapterError; the connection is
        kept for reuse only after a `[DONE]`."""
        headers = JSON if traceparent is None else {**JSON, "traceparent": traceparent}
        response: Response | None = None
        body: _BodyEvents | None = None
        try:
            response = await self._client.request(
                "POST", call.path, orjson.dumps(call.body), headers
            )
            if response.status != 200:
                raise status_error(response.status, await response.read(), self.engine)
            body = _BodyEvents(self._oversized, call.events, sink)
            yield response, body
        except EngineConnectionError as e:
            raise connection_error(e, self.engine) from e
        except orjson.JSONDecodeError as e:
            raise AdapterError(
                ErrorCode.WORKER_RESET,
                f"{self.engine} sent a malformed event: {e}",
                engine=self.engine,
            ) from e
        finally:
            if response is not None:
                self._client.release(response, read_to_end=body is not None and body.done)

    def _oversized(self, data: Oversized) -> Any:
        """The JSON of an event larger than the SSE bound (of which only the head and the
        tail were kept): an error, unless an engine that sends such events overrides this
        to recover what it needs from them."""
        raise AdapterError(
            ErrorCode.WORKER_RESET,
            f"{self.engine} sent an event over the size bound",
            engine=self.engine,
        )

    def ended_early(self) -> AdapterError:
        return AdapterError(
            ErrorCode.WORKER_RESET, f"{self.engine} ended the stream early", engine=self.engine
        )
