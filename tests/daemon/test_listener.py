"""The listening socket: a burst of connections is accepted together, and a daemon out of
file descriptors leaves new connections queued instead of closing them."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
from collections.abc import Callable

import yaml
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from tests.helpers import BIN, get_request, mock_pool, read_answer

#: Within the smallest listen backlog a kernel may cap ours to (somaxconn was 128 before
#: Linux 5.4): a connect past it would wait for the daemon, whose loop this test holds.
BURST = 100


async def _healthz(sock: socket.socket) -> int:
    """The status of `/healthz` asked on `sock`, connected before the daemon could accept it
    (`raw_connection` lets the loop turn while it connects)."""
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(get_request("/healthz"))
    status, _, _ = await read_answer(reader)
    writer.close()
    return status


async def _turns_until(done: Callable[[], bool]) -> int:
    """How many turns of the loop pass until `done()` holds (checked once a turn)."""
    loop = asyncio.get_running_loop()
    reached = loop.create_future()
    turns = 0

    def turn() -> None:
        nonlocal turns
        turns += 1
        if done():
            reached.set_result(None)
        else:
            loop.call_soon(turn)  # (runs on the loop's next turn)

    loop.call_soon(turn)
    await reached
    return turns


async def test_a_burst_of_connections_is_accepted_within_a_turn_or_two(start_daemon):
    """OC-LOAD-1215: uvloop's own server (libuv >= 1.45) accepts one connection a turn of
    the loop. In the soak, where a turn took milliseconds, 80 to 350 connections stood in
    the kernel's queue, a new connection waited a second or more for its answer, and a
    `/healthz` probe now and then timed out."""
    api = await start_daemon(mock_pool())
    guard = api.daemon._guard
    before = guard.open
    # the kernel completes each handshake: they wait in its queue until the daemon accepts
    clients = [socket.create_connection(("127.0.0.1", api.daemon.port)) for _ in range(BURST)]
    turns = await _turns_until(lambda: guard.open >= before + BURST)
    assert turns <= 3  # accepted (one turn) and opened (the next), not one a turn
    statuses = await asyncio.gather(*(_healthz(c) for c in clients))
    assert statuses == [200] * BURST


async def test_a_connection_that_finds_no_descriptor_waits_and_is_served(start_daemon):
    """OC-LOAD-1215: out of file descriptors, the daemon pauses accepting and leaves the
    connection queued in the kernel (libuv accepts and closes it at once)."""
    api = await start_daemon(mock_pool())
    client = socket.socket()  # its descriptor, before there are none
    lowest_free = os.open(os.devnull, os.O_RDONLY)  # the descriptor accept() would take
    os.close(lowest_free)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with capture_logs() as logs:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor
        try:
            client.connect(("127.0.0.1", api.daemon.port))
            async with asyncio.timeout(30):
                await _turns_until(lambda: any("out of file" in e["event"] for e in logs))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    async with asyncio.timeout(30):  # accepted once the pause is over
        assert await _healthz(client) == 200


async def test_serving_on_a_port_in_use_exits_2_naming_the_address(start_daemon, tmp_path):
    """OC-LOAD-1215: one line that says where, as asyncio's create_server said it."""
    api = await start_daemon(mock_pool())
    config = {"server": {"port": api.daemon.port, "state_dir": str(tmp_path)},
              "pools": [mock_pool()]}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    serve = await asyncio.create_subprocess_exec(
        BIN / "orchestratord", "serve", "--config", str(tmp_path / "c.yaml"),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    _, err = await asyncio.wait_for(serve.communicate(), 60)
    errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert serve.returncode == 2
    assert errors == [
        f"error: [Errno 98] cannot listen on 127.0.0.1:{api.daemon.port}: Address already in use"
    ]


async def test_connections_waiting_to_be_accepted_are_a_gauge(start_daemon):
    """OC-LOAD-1215: the standing queue that delayed every new connection showed nowhere but
    in `ss`: not in the loop's lag, not in `connections_open`."""
    api = await start_daemon(mock_pool())
    clients = [socket.create_connection(("127.0.0.1", api.daemon.port)) for _ in range(10)]
    # what a scrape would say now, while this test holds the loop: all ten in the kernel
    scrape = generate_latest(api.daemon.service.metrics.registry).decode()
    assert "\nconnections_waiting 10.0\n" in scrape
    statuses = await asyncio.gather(*(_healthz(c) for c in clients))
    assert statuses == [200] * 10
    assert await api.metric("connections_waiting") == 0
