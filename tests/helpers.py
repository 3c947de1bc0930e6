"""Helpers for tests that talk to a real orchestratord over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from orchestratord.daemon import Daemon
from pool_managerd.launchers import die_with_parent, free_port
from worker_adapters.mock import MockAdapter

BIN = Path(sys.executable).parent


def mock_pool(id: str = "mock", **overrides: Any) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "id": id,
        "engine": "mock",
        "model": f"{id}-model",
        "queue": {"capacity": 64, "policy": "reject"},
        "replicas": {"managed": {"count": 1, "slots": 2}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(pool.get(key), dict):
            pool[key] = {**pool[key], **value}
        else:
            pool[key] = value
    return pool


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """A streamed response's SSE events, each as its fields, as they arrive; comments (queue
    position, keep-alive) skipped."""
    event: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line == "":
            if event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            event[key] = value


class Api:
    """A thin raw-HTTP helper: tests see exactly what a client sees."""

    def __init__(self, base: str, session: aiohttp.ClientSession, daemon: Daemon) -> None:
        self.base = base
        self.http = session
        self.daemon = daemon

    async def submit(
        self, expect: int | None = 202, **body: Any
    ) -> tuple[int, dict[str, Any], Any]:
        async with self.http.post(f"{self.base}/v1/tasks", json=body) as r:
            data = await r.json()
            if expect is not None:
                assert r.status == expect, data
            return r.status, data, r.headers

    async def events(
        self,
        task_id: str,
        last_event_id: int | None = None,
        until: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """Read a task's SSE stream to its end (or until event `until`)."""
        headers = dict(headers or {})
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        out: list[tuple[str, int, dict[str, Any]]] = []
        async with self.http.get(f"{self.base}/v1/tasks/{task_id}/stream", headers=headers) as r:
            assert r.status == 200, await r.text()
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for event in sse_events(r):
                out.append((event["event"], int(event["id"]), json.loads(event["data"])))
                if until and event["event"] == until:
                    return out
        return out

    async def status(self, task_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        async with self.http.get(f"{self.base}/v1/tasks/{task_id}", headers=headers) as r:
            assert r.status == 200
            return await r.json()

    async def cancel(self, task_id: str) -> int:
        async with self.http.post(f"{self.base}/v1/tasks/{task_id}/cancel") as r:
            return r.status

    async def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.http.get(f"{self.base}{path}", headers=headers) as r:
            body = await r.read()
            ctype = r.headers.get("Content-Type", "")
            return r.status, json.loads(body) if "json" in ctype else body.decode()

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of a scrape of `/metrics` (a counter by its `_total` name)."""
        _, text = await self.get("/metrics")
        return next(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and sample.labels == labels
        )

    async def wait_state(
        self, task_id: str, state: str, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Follow the stream until the task reaches `state` (running: its `started`)."""
        if state == "running":
            await self.events(task_id, until="started", headers=headers)
        else:
            await self.events(task_id, headers=headers)
        status = await self.status(task_id, headers)
        assert status["state"] == state, status
        return status


async def wait_ready(api: Api) -> None:
    """Wait for every replica to be Ready, on the pools' own change notifications."""
    service = api.daemon.service
    assert service is not None
    async with asyncio.timeout(30):  # fail clearly, never hang, if replicas cannot start
        for pool in service.pools.values():
            replicas = pool.manager.replicas
            await pool.manager.wait_for(lambda r=replicas: all(x.state == "ready" for x in r))


async def orchctl(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the real `orchctl` executable against `url`: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchctl",
        "--url",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def start_serve(config_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Run the real `orchestratord serve` on a free port: (process, its URL)."""
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchestratord",
        "serve",
        "--config",
        str(config_path),
        "--port",
        "0",
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent,  # never outlives a killed test run
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "daemon exited before serving"
            if "serving on" in line:
                return proc, line.split("serving on", 1)[1].strip()


async def wait_log(proc: asyncio.subprocess.Process, needle: str) -> str:
    """Read the daemon's log until a line containing `needle`; return that line."""
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, f"the daemon exited before logging {needle!r}"
            if needle in line:
                return line


Event = tuple[str, int, str]  # (event, id, raw data)


def state_db() -> Path:
    """The default SQLite task store of a daemon started by the test."""
    return Path(os.environ["XDG_STATE_HOME"]) / "orchestratord" / "orchestratord.db"


@contextmanager
def journal(served: Served) -> Iterator[Any]:
    """A connection to the served daemon's task store (committed on exit)."""
    url = served.store.get("url")
    if url:
        with psycopg.connect(url) as conn:
            yield conn
    else:
        with sqlite3.connect(state_db()) as conn:
            yield conn


class Served:
    """One `orchestratord serve` process on the test's state dir."""

    def __init__(self, tmp: Path, http: aiohttp.ClientSession) -> None:
        self.tmp, self.http = tmp, http
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        #: The config's `store` (the `store_backend` fixture sets it).
        self.store: dict[str, Any] = {}

    async def start(self, *pools: dict[str, Any], server: dict[str, Any] | None = None) -> None:
        path = self.tmp / "config.yaml"
        config = {"pools": list(pools), "store": self.store, "server": server or {}}
        path.write_text(yaml.safe_dump(config))
        self.proc, self.url = await start_serve(path)
        if str(self.store.get("url", "")).startswith("postgres"):  # a shared store: elected
            await wait_log(self.proc, '"event":"leading"')
        # keep reading its log: a daemon whose stderr pipe fills up blocks on its next line
        assert self.proc.stderr is not None
        self._drain = asyncio.get_running_loop().create_task(self.proc.stderr.read())

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no drain, no last write
        await self.proc.wait()

    async def submit(self, expect: int = 202, **body: Any) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/v1/tasks", json=body) as r:
            data = await r.json()
            assert r.status == expect, data
            return data

    async def status(self, task_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/v1/tasks/{task_id}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def events(
        self, task_id: str, *, after: int | None = None, tokens: int | None = None,
        until: str | None = None,
    ) -> list[Event]:  # fmt: skip
        """The task's SSE events, raw, to its end (or `tokens` token events, or `until`)."""
        headers = {} if after is None else {"Last-Event-ID": str(after)}
        out: list[Event] = []
        async with self.http.get(f"{self.url}/v1/tasks/{task_id}/stream", headers=headers) as r:
            assert r.status == 200, await r.text()
            fields: dict[str, str] = {}
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(": ")
                    fields[key] = value
                    continue
                if not fields:
                    continue
                out.append((fields["event"], int(fields["id"]), fields["data"]))
                fields = {}
                if out[-1][0] == until or (
                    tokens is not None and sum(e[0] == "token" for e in out) == tokens
                ):
                    break
        return out


async def start_ledger_engine() -> tuple[asyncio.subprocess.Process, str]:
    """The project's mock OpenAI server in a process of its own (it outlives the daemons
    under test), keeping a ledger of the requests it completed: (process, URL)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "test_harness.engines.mock_http", "--port", str(port), "--ledger",
        stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        assert b"ready" in await proc.stdout.readline()
    return proc, f"http://127.0.0.1:{port}"


async def create_item_batch(http: aiohttp.ClientSession, url: str, items: int) -> str:
    """Upload `items` completion lines (`item-N`, prompt `item N`, model `mock-model`) and
    start a batch of them on the daemon at `url`: the batch's id."""
    lines = [
        {"custom_id": f"item-{i}", "method": "POST", "url": "/v1/completions",
         "body": {"model": "mock-model", "prompt": f"item {i}", "max_tokens": 4}}
        for i in range(items)
    ]  # fmt: skip
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", "".join(json.dumps(x) + "\n" for x in lines).encode(),
                   filename="items.jsonl")  # fmt: skip
    async with http.post(f"{url}/v1/files", data=form) as r:
        assert r.status == 200, await r.text()
        file_id = (await r.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    async with http.post(f"{url}/v1/batches", json=body) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["id"])


async def park_engine(http: aiohttp.ClientSession, engine_url: str, daemon_url: str) -> int:
    """Park every stream of the ledger engine, once every request the daemon's `remote`
    pool sent is there (none in transit, which the engine could still read and answer
    after the daemon died): how many requests the engine had completed."""
    async with http.post(f"{engine_url}/_test/hold") as r:
        engine_done = int((await r.json())["total"])
    async with http.get(f"{daemon_url}/v1/pools/remote") as r:
        (replica,) = (await r.json())["replicas"]
    sent = replica["slots_total"] - replica["slots_free"]
    async with http.get(f"{engine_url}/_test/ledger", params={"parked": sent}):
        pass
    return engine_done


def engine_pool(engine_url: str, slots: int = 4) -> dict[str, Any]:
    """A pool (`remote`, model `mock-model`) on the ledger engine at `engine_url`."""
    return {
        "id": "remote", "engine": "openai", "model": "mock-model",
        "queue": {"capacity": 512}, "slots_per_endpoint": slots,
        "replicas": {"endpoints": [engine_url]},
    }  # fmt: skip


def readers_stalled_at_first_token(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """As if a stream's client stopped reading at its first token: the daemon's writes of
    tokens wait until the returned event is set. The mock engine starts only once a reader
    had its first write, so the reader is one from the start, never a late one."""
    resumed, reading = asyncio.Event(), asyncio.Event()
    write = web.StreamResponse.write

    async def held_at_first_token(self: web.StreamResponse, data: bytes) -> None:
        reading.set()
        if b"event: token" in data and not resumed.is_set():
            await resumed.wait()
        return await write(self, data)

    engine_stream = MockAdapter.stream

    async def once_read(self: MockAdapter, request: Any) -> AsyncIterator[Any]:
        await reading.wait()
        async for event in engine_stream(self, request):
            yield event

    monkeypatch.setattr(web.StreamResponse, "write", held_at_first_token)
    monkeypatch.setattr(MockAdapter, "stream", once_read)
    return resumed


# -- raw HTTP, for what a client library would not send ------------------------------


async def raw_connection(port: int, data: bytes = b"", *, rcvbuf: int | None = None) -> Any:
    """A raw connection (reader, writer), `data` sent."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    if data:
        writer.write(data)
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one whole HTTP answer with Content-Length: (status, headers, body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    return status, headers, await reader.readexactly(int(headers["content-length"]))


def get_request(path: str) -> bytes:
    """A bare HTTP/1.1 GET of `path`, as bytes for a raw connection."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
