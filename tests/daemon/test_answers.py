"""Answers in memory: large answers being written are bounded in bytes together
(`api.answers`), and a reader catching up on a long stream writes it a piece at a time."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from typing import Any

from orchestratord.api import streaming
from orchestratord.api.answers import AnswerBudget
from orchestratord.api.sse import NativeEvents
from tests.helpers import get_request, mock_pool, raw_connection, read_answer


async def _large_task(api: Any, mib: int) -> str:
    """A completed task whose output is `mib` MiB (the mock engine's 4 KiB tokens). (A
    status of 8 MiB is more than the kernel's send buffer takes from a client that reads
    nothing: Linux grows it to `net.ipv4.tcp_wmem`'s 4 MiB at most.)"""
    _, admitted, _ = await api.submit(
        model="mock-model", prompt="[[big:4096]]", max_tokens=256 * mib
    )
    await api.wait_state(admitted["task_id"], "completed")
    return str(admitted["task_id"])


async def test_large_answers_being_written_hold_at_most_the_answer_buffer(
    start_daemon, monkeypatch
):
    """OC-LOAD-1214: `max_output_bytes` bounded one task's status, not how many were being
    written at once: 4,096 slow clients fetching a 1 MiB output held 4 GiB. A status the
    budget would refuse is refused before it is built (building it is the expensive part)."""
    api = await start_daemon(
        mock_pool(), max_output_bytes=16 << 20, stream_buffer_bytes=16 << 20,
        answer_buffer_bytes=24 << 20,
    )  # fmt: skip
    path = f"/v1/tasks/{await _large_task(api, 8)}"  # an 8 MiB status reserves 16: one fits
    slow, slow_writer = await raw_connection(api.daemon.port, get_request(path), rcvbuf=4096)
    async with asyncio.timeout(30):
        while await api.metric("response_body_bytes") == 0:  # written to the slow client
            pass
    built: list[str] = []
    status_of = api.daemon.service.status
    monkeypatch.setattr(
        api.daemon.service, "status", lambda *args: built.append(args[0]) or status_of(*args)
    )
    async with api.http.get(api.base + path, headers={"X-Correlation-Id": "second"}) as r:
        refusal = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert r.headers["X-Correlation-Id"] == "second"  # its own id, as any answer
    assert refusal["code"] == "OVERLOADED" and "answer_buffer_bytes" in refusal["message"]
    assert built == []  # refused before it was built
    assert (await api.get("/v1/models"))[0] == 200  # small answers go out as before
    status, _, body = await read_answer(slow)  # the slow client takes it all...
    assert status == 200 and len(body) > 8 << 20
    async with asyncio.timeout(30):
        while await api.metric("response_body_bytes") != 0:  # ... and lets go of it
            pass
    assert (await api.status(path.rsplit("/", 1)[1]))["state"] == "completed"  # served again
    slow_writer.close()


async def test_an_openai_completion_refused_for_the_budget_names_its_task(start_daemon):
    """OC-LOAD-1214: a non-streamed completion's answer refused for the budget says so in
    OpenAI's shape, with the task (completed, retained) it would have carried."""
    api = await start_daemon(
        mock_pool(), max_output_bytes=16 << 20, stream_buffer_bytes=16 << 20,
        answer_buffer_bytes=20 << 20,
    )  # fmt: skip
    path = f"/v1/tasks/{await _large_task(api, 8)}"  # it reserves 16 MiB; the completion 8
    _, slow_writer = await raw_connection(api.daemon.port, get_request(path), rcvbuf=4096)
    async with asyncio.timeout(30):
        while await api.metric("response_body_bytes") == 0:
            pass
    body = {"model": "mock-model", "prompt": "[[big:4096]]", "max_tokens": 1024}
    async with api.http.post(f"{api.base}/v1/completions", json=body) as r:
        refused = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        task_id = r.headers["X-Task-Id"]
    assert refused["error"]["code"] == "OVERLOADED"
    assert "answer_buffer_bytes" in refused["error"]["message"]
    slow_writer.close()  # the budget's room comes back once the slow client is gone
    async with asyncio.timeout(30):
        while await api.metric("response_body_bytes") != 0:
            pass
    assert (await api.status(task_id))["state"] == "completed"


async def test_an_idle_connection_keeps_neither_its_last_body_nor_its_last_answer(
    start_daemon,
):
    """OC-LOAD-1214: aiohttp keeps a connection's last request and answer while it waits
    for the next request, and they kept their bytes: idle keep-alive connections each held
    up to a 1 MiB body and a 1 MiB answer, outside every budget."""
    api = await start_daemon(mock_pool())
    status_of = get_request(f"/v1/tasks/{await _large_task(api, 1)}")  # a 1 MiB output
    refused = json.dumps({"model": "mock-model", "prompt": "x" * 900_000, "max_tokens": -1})
    post = (
        "POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(refused)}\r\n\r\n{refused}"
    ).encode()
    idle = []
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(4):  # connections idle after a 900 KB body, and after a 1 MiB answer
            reader, writer = await raw_connection(api.daemon.port, post)
            assert (await read_answer(reader))[0] == 400  # read whole, then refused
            idle.append(writer)
            reader, writer = await raw_connection(api.daemon.port, status_of)
            status, _, body = await read_answer(reader)
            assert status == 200 and len(body) > 1 << 20
            idle.append(writer)
        del body
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 2 << 20, held  # (they held 7.8 MB: 4 x (0.9 + 1.05) MB)
    for writer in idle:
        writer.close()


def test_an_answer_larger_than_the_budget_is_served_alone():
    """OC-LOAD-1214: else it would be refused for ever."""
    budget = AnswerBudget(100)
    assert budget.reserve(60) and not budget.reserve(60)  # two would pass it
    budget.held -= 60
    assert budget.reserve(150)  # alone, it goes out
    assert not budget.reserve(1)


async def test_a_reader_catching_up_writes_a_piece_at_a_time(start_daemon, monkeypatch):
    """OC-LOAD-1214: a reader resuming a long stream rendered and wrote all of it at once,
    so each such connection held the stream's whole rendering."""
    monkeypatch.setattr(streaming, "PIECE_EVENTS", 16)
    pieces: list[int] = []
    render = NativeEvents.__call__

    def counted(self: NativeEvents, events: list[Any]) -> bytes:
        pieces.append(len(events))
        return render(self, events)

    monkeypatch.setattr(NativeEvents, "__call__", counted)
    api = await start_daemon(mock_pool())
    _, admitted, _ = await api.submit(model="mock-model", prompt="long", max_tokens=100)
    task_id = admitted["task_id"]
    await api.wait_state(task_id, "completed")
    pieces.clear()
    events = await api.events(task_id)  # the whole stream, from its start
    assert [e[0] for e in events] == ["started", *["token"] * 100, "end"]
    assert [e[1] for e in events] == list(range(102))  # each once, in order
    assert sum(pieces) == 102 and max(pieces) == 16 and len(pieces) == 7
