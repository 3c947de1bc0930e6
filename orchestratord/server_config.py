"""The daemon's own section of its configuration (`server:`): where it listens, the limits
it holds every client to, and where agents join. Each limit is documented where it is set
(README's Limits; docs/RELIABILITY.md says what each bounds)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from pool_managerd.yaml_config import Section


class TlsConfig(Section):
    cert: Annotated[str, Field(min_length=1)]
    key: Annotated[str, Field(min_length=1)]


class AgentTlsConfig(TlsConfig):
    #: Require agents to present a client certificate signed by this CA (PEM).
    client_ca: str | None = None


class AgentsConfig(Section):
    """Where pool-managerd agents join (`pool-managerd serve --join grpc://HOST:PORT`)."""

    #: host:port of the agents' gRPC service (port 0: any free port, logged).
    listen: str = "127.0.0.1:7070"
    #: File holding the join token agents present (required: nobody joins without it).
    token_file: Annotated[str, Field(min_length=1)]
    #: Serve the agents over TLS (`grpcs://`); plaintext is refused then.
    tls: AgentTlsConfig | None = None
    #: How often agents send heartbeats, and how many may be missed before their replicas
    #: go Unready.
    heartbeat_interval_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    heartbeat_misses: Annotated[int, Field(ge=1, le=100)] = 3
    #: An agent away this long leaves its pools (its replicas are removed).
    forget_after_s: Annotated[float, Field(gt=0)] = 300.0


class ServerConfig(Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    #: Bytes request bodies still arriving may hold together (each reserves twice its
    #: length: its pieces as they arrive, then their join). A body that would pass it is
    #: refused unread with 503 `OVERLOADED`; at least twice `max_body_bytes`.
    body_buffer_bytes: Annotated[int, Field(ge=2048)] = 64 << 20
    #: Bytes large answers being written may hold together (an answer of 64 KiB or more
    #: reserves twice its length until its client has taken all but 64 KiB of it). One that
    #: would pass it is answered 503 `OVERLOADED` instead; one larger than all of it is
    #: served alone.
    answer_buffer_bytes: Annotated[int, Field(ge=64 << 10)] = 64 << 20
    #: Seconds running tasks get to finish on SIGTERM before they are cancelled.
    shutdown_grace_s: Annotated[float, Field(ge=0)] = 30.0
    #: How long a finished task's status and events stay available.
    retention_s: Annotated[float, Field(ge=0)] = 300.0
    max_retained_tasks: Annotated[int, Field(ge=1)] = 10_000
    #: Events kept per task for `Last-Event-ID` resume (the stream's memory bound)...
    stream_buffer_events: Annotated[int, Field(ge=16)] = 4096
    #: ... holding at most this much token text (bytes: a character of ASCII text counts
    #: one, any other four): an engine's long tokens shorten the window, not the bound.
    stream_buffer_bytes: Annotated[int, Field(ge=4096)] = 1 << 20
    #: Bytes the daemon may hold for tasks: queued requests, stream buffers, retained
    #: outputs. Past it, finished tasks are forgotten oldest first (they answer 410
    #: `EXPIRED`); when live tasks alone would pass it, admission answers 429.
    memory_budget_bytes: Annotated[int, Field(ge=1 << 20)] = 512 << 20
    #: Output kept per task for `GET /v1/tasks/{id}` (UTF-8 bytes).
    max_output_bytes: Annotated[int, Field(ge=0)] = 1 << 20
    #: A stream with nothing to send for this long sends an SSE comment (with the queue
    #: position while the task waits), so clients and proxies do not time out.
    stream_heartbeat_s: Annotated[float, Field(gt=0)] = 5.0
    #: A task whose stream is its request's answer (OpenAI `stream: true`, one-request
    #: native streaming, non-streamed OpenAI requests) is canceled when its client goes
    #: away and no reader comes back (Last-Event-ID resume) within this many seconds.
    abandon_grace_s: Annotated[float, Field(ge=0)] = 3.0
    #: API keys, hashed (`orchestratord keys create`): each names a tenant, roles and
    #: limits. With keys, every `/v1/` request needs `Authorization: Bearer <key>` (health,
    #: readiness, metrics and the OpenAPI stay open). Re-read on SIGHUP.
    keys_file: str | None = None
    #: Environment variable holding one admin key (tenant `default`), for simple setups.
    api_key_env: str | None = None
    #: Directories a reload may name GGUF files under (managed llama.cpp pools); any other
    #: path is refused without saying why.
    model_dirs: list[str] = []
    #: Serve HTTPS with this certificate chain and key (PEM files).
    tls: TlsConfig | None = None
    #: A connection with no request in progress — idle between requests, or still sending
    #: its request head — is closed after this long (bytes that do not complete a head do
    #: not extend it: slow-loris heads are bounded too).
    idle_timeout_s: Annotated[float, Field(gt=0)] = 15.0
    #: A request's head (request line and headers) must arrive whole within this long of
    #: its first byte, else the connection is closed.
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    #: A request's body must arrive whole within this long of its head, plus a second for
    #: every KiB it has sent (a slow upload that keeps coming is served; one that stalls,
    #: or sends less than its Content-Length, is answered 408 and its connection closed).
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: Connections held at once. Past it, only `/healthz`, `/readyz` and `/metrics` are
    #: served (everything else answers 503 `OVERLOADED`); past twice it, connections are
    #: answered 503 and closed unread. Lowered to fit the open-file limit if need be.
    max_connections: Annotated[int, Field(ge=1)] = 4096
    #: Longest request line, and longest header field; larger heads answer 431.
    max_header_bytes: Annotated[int, Field(ge=1024, le=65536)] = 8190
    #: Longest request head in all (request line and every header; nginx's default), so
    #: a connection's head holds at most this much; larger heads answer 431.
    max_head_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 32 << 10
    #: A client that takes none of its answer for this long while the daemon's writes to
    #: it wait is disconnected, the rest dropped (it stopped reading: it must not hold the
    #: answer's memory, a handler and a connection); a stream's task runs on.
    write_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    #: Enables the test-only provider-state endpoint (pact verification). Never in production.
    enable_test_endpoints: bool = False
    #: pool-managerd agents on other hosts join here (pools with `replicas.remote`).
    agents: AgentsConfig | None = None
    #: The URL clients reach this daemon at, which standbys name in `NOT_LEADER` (default:
    #: the URL it listens on — behind a proxy or NAT, set it).
    advertise_url: Annotated[str, Field(pattern=r"^https?://.+")] | None = None
    #: Where the daemon keeps its state (the task store); default
    #: `$XDG_STATE_HOME/orchestratord` (`~/.local/state/orchestratord`).
    state_dir: str | None = None

    @model_validator(mode="after")
    def _limits_fit(self) -> ServerConfig:
        if self.max_head_bytes < self.max_header_bytes:
            raise ValueError(
                f"max_head_bytes ({self.max_head_bytes}) must be at least max_header_bytes "
                f"({self.max_header_bytes}): a head holds its longest line"
            )
        if self.body_buffer_bytes < 2 * self.max_body_bytes:
            raise ValueError(
                f"body_buffer_bytes ({self.body_buffer_bytes}) must be at least twice "
                f"max_body_bytes ({self.max_body_bytes}): a body reserves twice its length"
            )
        return self

    def resolved_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        xdg = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
        return Path(xdg) / "orchestratord"
