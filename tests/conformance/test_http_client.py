"""The engine HTTP client (`worker_adapters/http_client.py` and its connections,
`http_connection.py`) against a scripted HTTP/1.1 server: what it does with the
connections an engine keeps, closes or cuts short, and how much of a response it holds
for a reader that does not keep up."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from orchestrator_core.errors import ErrorCode
from pool_managerd.probe import poll_until
from worker_adapters.base import AdapterError, End, GenerateRequest, Token
from worker_adapters.http_client import HttpClient
from worker_adapters.http_connection import HIGH_WATER, IDLE_S, Response
from worker_adapters.openai_http import OpenAIAdapter

Answer = Callable[[int, asyncio.StreamWriter], Awaitable[bool]]


def sse_body(*texts: str, finish: bool = True) -> bytes:
    """An OpenAI completion stream, chunked: one chunk per event."""
    events = [b'{"choices":[{"text":"%s"}]}' % t.encode() for t in texts]
    if finish:
        events.append(b'{"choices":[{"text":"","finish_reason":"length"}]}')
        events.append(b"[DONE]")
    frames = [b"data: " + e + b"\n\n" for e in events]
    return b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames)


OK_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)
END = b"0\r\n\r\n"


async def answer_a(n: int, writer: asyncio.StreamWriter) -> bool:
    """An engine that answers every request with the one-token stream "a"."""
    writer.write(OK_HEAD + sse_body("a") + END)
    return True


@asynccontextmanager
async def openai_at(url: str) -> AsyncIterator[OpenAIAdapter]:
    adapter = OpenAIAdapter(url, model="m")
    try:
        yield adapter
    finally:
        await adapter.close()


class ScriptedServer:
    """Reads requests (headers + Content-Length body) and lets `answer(n, writer)` reply
    to the n-th request on a connection; `answer` returns whether to keep the connection."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.requests = 0
        #: the connection (1-based) each request arrived on, and the connections still open
        self.arrived_on: list[int] = []
        self.open: dict[int, asyncio.StreamWriter] = {}
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        return f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def until(self, check: Callable[[], bool]) -> None:
        """Return once `check()` holds (it is looked at whenever a connection opens or
        closes, or a request arrives)."""
        async with self._changed:
            await self._changed.wait_for(check)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self.open[number] = writer
        await self._notify()
        n = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                await reader.readexactly(length)
                n += 1
                self.requests += 1
                self.arrived_on.append(number)
                await self._notify()
                if not await self.answer(n, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        del self.open[number]
        await self._notify()


async def _texts(adapter: OpenAIAdapter, how: str = "stream") -> list[str]:
    request = GenerateRequest("x", max_tokens=2)
    if how == "stream":
        events = [e async for e in adapter.stream(request)]
    else:
        events = []
        await adapter.relay(request, lambda read: events.extend(read) is None)
    return [e.text for e in events if isinstance(e, Token)]


@pytest.mark.parametrize("how", ["stream", "relay"])
async def test_a_kept_alive_connection_is_reused_even_when_its_end_comes_after_done(how):
    """OC-ADAPT-3008, OC-ADAPT-3009: the first answer's last bytes (the chunked body's end)
    are held back until the stream has ended for the adapter; the connection is still read
    to its end and pooled, and carries every later stream."""
    ended = asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK_HEAD + sse_body("a", "b"))
        if n == 1:
            await writer.drain()
            await ended.wait()
        writer.write(END)
        return True

    server = ScriptedServer(answer)
    async with server as url, openai_at(url) as adapter:
        assert await _texts(adapter, how) == ["a", "b"]
        ended.set()
        async with asyncio.timeout(10):
            await poll_until(lambda: _pooled(adapter))
        for _ in range(2):
            assert await _texts(adapter, how) == ["a", "b"]
    assert (server.connections, server.requests) == (1, 3)


async def test_a_relay_hands_each_read_over_from_the_connections_callback():
    """OC-ADAPT-3009: a read that arrives while the relay waits reaches the sink inside
    the connection's callback, outside any task: no task step between engine and sink;
    and the events of one read (here three chunks: a token, the finish, `[DONE]`) reach
    it in one call."""
    go = asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK_HEAD + sse_body("a", finish=False))
        await go.wait()  # the second token only once the first was handed over
        writer.write(sse_body("b") + END)
        return True

    calls: list[tuple[list[object], asyncio.Task[object] | None]] = []

    def sink(events: list[object]) -> bool:
        calls.append((events, asyncio.current_task()))
        go.set()
        return True

    async with ScriptedServer(answer) as url, openai_at(url) as adapter, asyncio.timeout(10):
        await adapter.relay(GenerateRequest("x", max_tokens=2), sink)
    assert [events for events, _ in calls] == [[Token("a")], [Token("b"), End("length", 2, None)]]
    assert calls[1][1] is None


async def test_the_events_before_an_error_in_the_same_read_reach_the_sink_first():
    """OC-ADAPT-3009: an engine's error event fails the relay after the tokens it sent
    before it, those of the same read included — as `stream` yields them."""
    go = asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK_HEAD + sse_body("a", finish=False))
        await go.wait()
        error = b'data: {"error":{"message":"out of memory"}}\n\n'
        writer.write(sse_body("b", finish=False) + b"%x\r\n%s\r\n" % (len(error), error))
        return False

    calls: list[list[object]] = []

    def sink(events: list[object]) -> bool:
        calls.append(events)
        go.set()
        return True

    async with ScriptedServer(answer) as url, openai_at(url) as adapter, asyncio.timeout(10):
        with pytest.raises(AdapterError) as err:
            await adapter.relay(GenerateRequest("x", max_tokens=2), sink)
    assert calls == [[Token("a")], [Token("b")]]
    assert err.value.code is ErrorCode.WORKER_RESET


async def test_a_sink_that_fails_fails_the_relay_and_the_connection_is_not_kept():
    """OC-ADAPT-3009: what a sink raises inside the connection's callback comes out of
    `relay` (the daemon's runner reports it as its own failure), and the half-read
    response's connection is closed, never pooled."""
    go, failed = asyncio.Event(), asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        if server.connections > 1:
            return await answer_a(n, writer)
        writer.write(OK_HEAD + sse_body("a", finish=False))
        await go.wait()
        writer.write(sse_body("b", finish=False))  # the body goes on; the sink fails on "b"
        await failed.wait()
        return False

    def sink(events: list[object]) -> bool:
        if Token("b") in events:
            raise RuntimeError("a bug in the sink")
        go.set()
        return True

    server = ScriptedServer(answer)
    async with server as url, openai_at(url) as adapter:
        with pytest.raises(RuntimeError, match="a bug in the sink"):
            await adapter.relay(GenerateRequest("x", max_tokens=2), sink)
        failed.set()
        assert not adapter._client._idle
        assert await _texts(adapter, "relay") == ["a"]
    assert (server.connections, server.requests) == (2, 2)


async def test_connections_left_idle_by_a_burst_are_closed_not_kept():
    """OC-ADAPT-3008: after a burst, steady traffic reuses the newest connection; the
    burst's others are closed once they have idled `IDLE_S`, not kept until reused."""

    server = ScriptedServer(answer_a)
    async with server as url, openai_at(url) as adapter:
        streams = [adapter.stream(GenerateRequest("x", max_tokens=1)) for _ in range(3)]
        firsts = [await anext(s) for s in streams]  # three connections at once
        for s in streams:
            assert [e async for e in s][-1] == End("length", 1, None)
        assert all(isinstance(f, Token) for f in firsts) and len(adapter._client._idle) == 3
        burst = list(adapter._client._idle)
        for conn in burst[:2]:  # the two not on top have idled past IDLE_S
            conn.idle_since -= IDLE_S
        assert await _texts(adapter) == ["a"]  # reuses the newest
        assert list(adapter._client._idle) == [burst[2]]
        assert all(conn.closed for conn in burst[:2])
    assert (server.connections, server.requests) == (3, 4)


async def _pooled(adapter: OpenAIAdapter) -> bool:
    return len(adapter._client._idle) == 1


async def test_a_pooled_connection_the_engine_closed_is_resent_once_on_a_new_one():
    """OC-ADAPT-3008: the engine closed the idle connection as the request went out; it
    never answered it, so the client sends it again rather than failing the task."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        if n == 2:
            return False  # closes without a byte of answer
        writer.write(OK_HEAD + sse_body("a") + END)
        return True

    server = ScriptedServer(answer)
    async with server as url, openai_at(url) as adapter:
        assert await _texts(adapter) == ["a"]
        assert await _texts(adapter) == ["a"]
    assert (server.connections, server.requests) == (2, 3)


async def answer_a_and_close(n: int, writer: asyncio.StreamWriter) -> bool:
    """llama-server's way: every response ends its connection (keep-alive advertised)."""
    await answer_a(n, writer)
    return False


async def _one_request(client: HttpClient) -> bytes:
    """The first event of a request's answer."""
    response = await client.request("POST", "/v1/completions", b"{}")
    try:
        return (await response.read()).split(b"\n\n")[0]
    finally:
        client.release(response)


EVENT_A = b'data: {"choices":[{"text":"a"}]}'


async def test_a_client_whose_engine_closes_every_connection_opens_the_next_ahead():
    """OC-ADAPT-3010: with `keep_alive=False` each request starts opening the next
    connection, and the next request goes out on it rather than waiting for a connect;
    one spare at most, and closing the client closes it."""
    server = ScriptedServer(answer_a_and_close)
    async with server as url, asyncio.timeout(10):
        client = HttpClient(url, keep_alive=False)
        try:
            assert await _one_request(client) == EVENT_A
            await server.until(lambda: server.connections == 2)  # the spare, unused
            assert server.arrived_on == [1]
            assert await _one_request(client) == EVENT_A
            assert server.arrived_on == [1, 2]  # on the spare
            await server.until(lambda: server.connections == 3)  # the next spare
            assert list(server.open) == [3]
        finally:
            await client.close()
        await server.until(lambda: not server.open)
    assert server.connections == 3


async def test_a_spare_connection_the_engine_closed_is_not_an_error():
    """OC-ADAPT-3010, OC-ADAPT-3008: the engine may close the spare while it waits (its
    keep-alive timeout); the request that takes it is sent on a fresh connection, whether
    or not the client has seen the close yet."""
    server = ScriptedServer(answer_a_and_close)
    async with server as url, asyncio.timeout(10):
        client = HttpClient(url, keep_alive=False)
        try:
            await _one_request(client)
            await server.until(lambda: server.connections == 2)
            server.open[2].close()  # the engine's idle timeout, as the request goes out
            assert await _one_request(client) == EVENT_A
        finally:
            await client.close()
    first, second = server.arrived_on  # (the spare's replacement may be opening too)
    assert first == 1 and second > 2


async def test_an_engine_behind_tls_is_verified_against_the_trusted_cas(tmp_path, monkeypatch):
    """OC-ADAPT-3008: `https://` endpoints speak TLS, the engine's certificate checked
    against the system's CAs (or `SSL_CERT_FILE`, OpenSSL's own variable); an engine whose
    certificate nobody trusts is a connection failure, not a stream."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(tls)

    async with ScriptedServer(answer_a, tls) as url:
        async with openai_at(url) as untrusting:
            with pytest.raises(AdapterError) as err:
                await _texts(untrusting)
        assert err.value.message == "openai: could not connect to the engine"
        assert "CERTIFICATE_VERIFY_FAILED" in (err.value.detail or "")
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        async with openai_at(url) as adapter:
            assert await _texts(adapter) == ["a"]


async def test_an_engine_that_never_answers_a_probe_is_not_ready_and_a_worker_reset():
    """OC-ADAPT-3006: a probe past its timeout reads as not ready, and a capability query
    as the retriable WORKER_RESET (not a bare timeout escaping the adapter)."""
    silent = asyncio.Event()

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        await silent.wait()  # accepted, never answered
        return False

    async with ScriptedServer(answer) as url, openai_at(url) as adapter:
        adapter._probe_timeout_s = 0.2
        assert not await adapter.ready()
        with pytest.raises(AdapterError) as err:
            await adapter.capabilities()
        silent.set()
    assert err.value.code is ErrorCode.WORKER_RESET and err.value.retriable
    assert err.value.message == "openai: the engine did not answer in time"


async def test_a_response_cut_mid_body_is_a_worker_reset_after_what_arrived():
    """OC-ADAPT-3006"""

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK_HEAD + sse_body("a", finish=False))
        return False  # closes inside the chunked body

    seen: list[str] = []
    async with ScriptedServer(answer) as url, openai_at(url) as adapter:
        with pytest.raises(AdapterError) as err:
            async for e in adapter.stream(GenerateRequest("x", max_tokens=2)):
                seen.append(e.text if isinstance(e, Token) else "")
    assert seen == ["a"]
    assert err.value.code is ErrorCode.WORKER_RESET and err.value.retriable
    assert err.value.message == "openai: the engine's response was cut off"


async def test_a_reader_that_falls_behind_holds_a_bounded_part_of_the_body():
    """OC-ADAPT-3008: past HIGH_WATER buffered bytes the socket is not read, so the engine
    (here: its send buffer filling) waits for the reader."""
    writers: list[asyncio.StreamWriter] = []
    block = b"x" * 65536

    async def answer(n: int, writer: asyncio.StreamWriter) -> bool:
        writers.append(writer)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (200 * len(block)))
        for _ in range(200):  # 12.5 MiB
            writer.write(block)
        await writer.drain()  # returns only once the client has read it all
        return False

    async with ScriptedServer(answer) as url:
        client = HttpClient(url)
        r = await client.request("GET", "/big")
        try:
            async with asyncio.timeout(30):
                await poll_until(lambda: _paused(r))
                # the engine is held back: most of the body is still on its side
                await poll_until(lambda: _backed_up(writers))
            assert r._buffered <= HIGH_WATER + 4 * len(block)
            total = 0
            while chunk := await r.chunk():
                total += len(chunk)
            assert total == 200 * len(block)
        finally:
            client.release(r)
            await client.close()


async def _paused(r: Response) -> bool:
    return r._paused


async def _backed_up(writers: list[asyncio.StreamWriter]) -> bool:
    return bool(writers) and writers[0].transport.get_write_buffer_size() > HIGH_WATER
