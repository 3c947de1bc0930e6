"""Connection hygiene (issue 12) over raw sockets, where a client library would not
misbehave: connections held open, heads and bodies sent slowly or not at all, bodies the
daemon cannot hold, and aiohttp's own refusals."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from orchestratord.api.connections import ConnectionGuard
from orchestratord.config import ConfigError, parse_config
from orchestratord.server_config import ServerConfig
from tests.helpers import get_request, mock_pool, raw_connection, read_answer


class _UnsentBytes(asyncio.Transport):
    """A connection's transport as its timers see it: bytes not yet taken."""

    def __init__(self, unsent: int) -> None:
        super().__init__()
        self.unsent = unsent
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def abort(self) -> None:
        self.aborted = True


# -- connections and timers -------------------------------------------------------------


async def test_past_the_connection_limit_only_operator_paths_are_served(start_daemon):
    """OC-LOAD-1204: 1,100 half-open connections locked everyone out, health included."""
    api = await start_daemon(mock_pool(), max_connections=3)
    port = api.daemon.port
    held = [await raw_connection(port) for _ in range(3)]
    reader, _ = await raw_connection(port, get_request("/v1/pools"))
    status, headers, body = await read_answer(reader)
    assert status == 503 and headers["connection"] == "close" and b'"OVERLOADED"' in body
    assert headers["retry-after"] == "1"
    for path in ("/healthz", "/metrics"):
        reader, _ = await raw_connection(port, get_request(path))
        assert (await read_answer(reader))[0] == 200
    # now 3 over the limit: twice it is passed
    extra = [await raw_connection(port) for _ in range(2)]
    reader, _ = await raw_connection(port)  # refused before it sends a byte
    status, headers, body = await read_answer(reader)
    assert status == 503 and b'"OVERLOADED"' in body
    assert await reader.read() == b""  # and closed
    reader, writer = held[0]  # (opened within the limit: served whatever it asks)
    writer.write(get_request("/metrics"))
    scrape = (await read_answer(reader))[2].decode()
    assert 'connections_dropped_total{reason="over_limit"} 1.0' in scrape.splitlines()
    for _, w in held + extra:
        w.close()


async def test_a_connection_that_never_finishes_its_head_is_closed(start_daemon):
    """OC-LOAD-1204: half-sent request lines stayed open indefinitely."""
    api = await start_daemon(mock_pool(), idle_timeout_s=600, header_timeout_s=0.2)
    port = api.daemon.port
    # open, silent: the idle timer's, not this
    idle_reader, idle_writer = await raw_connection(port)
    reader, writer = await raw_connection(port, b"GET /v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    async with asyncio.timeout(30):
        assert await reader.read() == b""  # closed, unanswered, long before the idle timeout
    writer.close()
    idle_writer.write(get_request("/healthz"))  # the silent one outlived the slow head's timer
    assert (await read_answer(idle_reader))[0] == 200
    idle_writer.close()
    assert await api.metric("connections_dropped_total", reason="head_timeout") == 1


async def test_a_tls_handshake_not_begun_is_closed_after_the_head_timeout(start_daemon, tmp_path):
    """OC-LOAD-1204: the head's time starts at the connection, handshake included. The
    guard's timers start once the handshake is done; until the daemon accepted its own
    connections, one that never said hello was held for uvloop's default of 60 s."""
    import trustme

    issued = trustme.CA().issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    api = await start_daemon(
        mock_pool(), ready=False, tls={"cert": str(cert), "key": str(key)}, header_timeout_s=1
    )
    reader, writer = await raw_connection(api.daemon.port)
    async with asyncio.timeout(30):  # (uvloop's default would hold it twice that)
        assert await reader.read() == b""  # closed by the daemon, nothing said
    writer.close()


def _head(path: str, headers: int, size: int) -> bytes:
    """A GET of `path` with `headers` extra headers of `size` bytes each."""
    extra = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * size) for i in range(headers))
    return b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (path.encode(), extra)


async def test_a_head_past_max_head_bytes_is_refused_whatever_its_lines(start_daemon):
    """OC-LOAD-1213: aiohttp bounds each header line (8,190 bytes) and their number (100),
    not their sum: an 800 KB head was served, and 4,096 connections could hold 3 GB."""
    api = await start_daemon(mock_pool(), max_head_bytes=32768)
    port = api.daemon.port
    reader, writer = await raw_connection(port, _head("/healthz", 10, 8000))
    status, headers, body = await read_answer(reader)
    assert status == 431 and headers["content-type"] == "application/json"
    assert json.loads(body)["message"] == "request head too large (at most 32768 bytes in all)"
    assert await reader.read() == b""  # and closed, the rest unread
    writer.close()
    reader, writer = await raw_connection(port)  # a head within it is served; each anew
    for _ in range(2):
        writer.write(_head("/healthz", 5, 4000))  # 20 KB: two of them pass 32 KiB together
        assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_the_rest_of_an_unread_body_is_not_counted_as_a_head(start_daemon):
    """OC-LOAD-1213: a request answered before its body arrived (here a 404) has the rest
    of its body read and dropped by aiohttp; those bytes are not the next request's head."""
    api = await start_daemon(mock_pool(), max_head_bytes=32768)
    body = b"x" * 65536
    head = (
        b"POST /v1/tasks/no-such-task/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    reader, writer = await raw_connection(api.daemon.port, head)
    assert (await read_answer(reader))[0] == 404  # answered with the body still to come
    writer.write(body + get_request("/healthz"))
    assert (await read_answer(reader))[0] == 200  # the same connection serves the next
    writer.close()


async def test_a_heads_end_split_between_reads_is_found():
    """OC-LOAD-1213: the blank line that ends a head may arrive in two reads; what follows
    it (a body) is not counted as head. (Reads are handed to the counter here, in order.)"""
    config = ServerConfig(max_header_bytes=1024, max_head_bytes=1024)
    connection = ConnectionGuard(web.Server(lambda _: web.Response()), config, 16)()
    connection.transport = _UnsentBytes(0)
    head = _head("/", 3, 200)
    assert connection._head_fits(head[:-1]) and not connection._head_done
    assert connection._head_fits(head[-1:] + b"x" * 4096) and connection._head_done
    assert connection._head_bytes == len(head)


_POST_HEAD = (
    b"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
)


async def test_a_body_that_stops_short_is_answered_408_and_closed(start_daemon):
    """OC-LOAD-1204: a request body short of its Content-Length (a careless client's, or a
    slow loris past its head) held its connection and handler for as long as it liked."""
    api = await start_daemon(mock_pool(), idle_timeout_s=600, body_timeout_s=0.2)
    reader, writer = await raw_connection(
        api.daemon.port, _POST_HEAD % 100 + b'\r\n{"model": "mock'
    )
    async with asyncio.timeout(30):
        status, headers, body = await read_answer(reader)
        assert await reader.read() == b""  # and closed
    assert status == 408 and headers["connection"] == "close"
    refusal = json.loads(body)
    assert refusal["code"] == "INVALID_PARAMS" and "too slow" in refusal["message"]
    writer.close()
    assert await api.metric("connections_dropped_total", reason="body_timeout") == 1


async def test_a_body_that_follows_its_head_in_time_is_served(start_daemon):
    """OC-LOAD-1204: the body's timer starts with the head and lets a body that comes after
    it through (the client sends it only once told `100 Continue`)."""
    api = await start_daemon(mock_pool())
    whole = b'{"model": "mock-model", "prompt": "x", "max_tokens": 2}'
    head = _POST_HEAD % len(whole) + b"Expect: 100-continue\r\n\r\n"
    reader, writer = await raw_connection(api.daemon.port, head)
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(whole)
    assert (await read_answer(reader))[0] == 202
    writer.close()


async def test_an_idle_connection_is_closed(start_daemon):
    """OC-LOAD-1204"""
    api = await start_daemon(mock_pool(), idle_timeout_s=0.2)
    reader, writer = await raw_connection(api.daemon.port, get_request("/healthz"))
    assert (await read_answer(reader))[0] == 200
    async with asyncio.timeout(30):
        assert await reader.read() == b""  # kept alive, then closed when idle
    writer.close()


async def test_aiohttps_own_refusals_are_json_envelopes(start_daemon):
    """OC-LOAD-1205: malformed HTTP was a plain-text 400 with a traceback in the log; 405
    had no Allow."""
    api = await start_daemon(mock_pool(), max_header_bytes=1024)
    port = api.daemon.port
    reader, _ = await raw_connection(port, b"GARBAGE\r\n\r\n")
    status, headers, body = await read_answer(reader)
    assert status == 400 and headers["content-type"] == "application/json"
    assert b'"INVALID_PARAMS"' in body and b"malformed HTTP request" in body
    reader, _ = await raw_connection(
        port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    )
    status, headers, body = await read_answer(reader)
    assert status == 431 and b"1024" in body and headers["content-type"] == "application/json"
    async with api.http.put(f"{api.base}/v1/tasks/some-task/cancel") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
        assert (await r.json())["code"] == "INVALID_PARAMS"


# -- request bodies in memory -----------------------------------------------------------


def _task_body(prompt_chars: int) -> bytes:
    return json.dumps(
        {"model": "mock-model", "prompt": "x" * prompt_chars, "max_tokens": 2}
    ).encode()


async def test_bodies_still_arriving_hold_at_most_the_body_buffer(start_daemon):
    """OC-LOAD-1212: only each body was bounded (`max_body_bytes`); 4,096 connections
    sending 1 MiB bodies slowly could make the daemon hold 8 GiB in buffers."""
    api = await start_daemon(mock_pool(), max_body_bytes=4096, body_buffer_bytes=8192)
    port = api.daemon.port
    first = _task_body(3000)  # reserves twice its length: 6,100 of the 8,192
    reader, writer = await raw_connection(port, _POST_HEAD % len(first) + b"\r\n" + first[:100])
    async with asyncio.timeout(30):
        while await api.metric("request_body_bytes") != 2 * len(first):  # its head is being served
            pass
    second = _task_body(1200)  # would pass the budget: refused before it is read
    refused, _ = await raw_connection(port, _POST_HEAD % len(second) + b"\r\n" + second[:10])
    status, headers, body = await read_answer(refused)
    assert status == 503 and headers["retry-after"] == "1"
    refusal = json.loads(body)
    assert refusal["code"] == "OVERLOADED" and "body_buffer_bytes" in refusal["message"]
    writer.write(first[100:])  # the first arrives whole and is served
    assert (await read_answer(reader))[0] == 202
    assert await api.metric("request_body_bytes") == 0
    reader, writer = await raw_connection(port, _POST_HEAD % len(second) + b"\r\n" + second[:10])
    writer.write(second[10:])  # with the room back, the same body is served
    assert (await read_answer(reader))[0] == 202
    writer.close()


async def test_a_body_declared_too_large_is_refused_before_it_is_read(start_daemon):
    """OC-LOAD-1212"""
    api = await start_daemon(mock_pool(), max_body_bytes=4096)
    reader, writer = await raw_connection(api.daemon.port, _POST_HEAD % 5000 + b"\r\n{")
    status, _, body = await read_answer(reader)  # at once: not after 4,096 bytes, nor a timer
    assert status == 413 and b"4096" in body
    assert await api.metric("request_body_bytes") == 0
    writer.close()


def test_the_body_buffer_holds_at_least_one_body():
    """OC-LOAD-1212"""
    with pytest.raises(ConfigError, match="twice max_body_bytes"):
        parse_config({"server": {"max_body_bytes": 1 << 20, "body_buffer_bytes": 1 << 20}})


def test_a_head_holds_at_least_its_longest_line():
    """OC-LOAD-1213"""
    with pytest.raises(ConfigError, match="at least max_header_bytes"):
        parse_config({"server": {"max_header_bytes": 16384, "max_head_bytes": 8192}})


# -- answers a client is slow to take ----------------------------------------------------


async def test_a_slow_client_that_keeps_taking_its_answer_is_not_dropped():
    """OC-LOAD-1203: the write timer looks for progress, as nginx's `send_timeout` does: a
    16 MiB answer over a slow link takes longer than `write_timeout_s` to drain, and the
    client is still reading. (The timer's calls are made here, in order, not awaited.)"""
    guard = ConnectionGuard(web.Server(lambda _: web.Response()), ServerConfig(), 16)
    connection = guard()
    transport = connection.transport = _UnsentBytes(16 << 20)
    connection.pause_writing()  # the answer passed the high-water mark

    def timer_fires() -> None:
        assert connection._write_timer is not None
        connection._write_timer.cancel()
        connection._write_check()  # what the timer calls

    transport.unsent -= 4096  # the client took some within write_timeout_s
    timer_fires()
    assert not transport.aborted and not connection.write_stalled
    timer_fires()  # and nothing for another write_timeout_s
    assert transport.aborted and connection.write_stalled
    assert connection._write_timer is None
