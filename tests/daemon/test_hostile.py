"""Hostile and careless clients (issue 12): each finding, against a live daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from orchestratord.service.admission import Submission
from orchestratord.service.output import Output, from_columns
from orchestratord.service.records import request_bytes
from tests.helpers import (
    get_request,
    mock_pool,
    raw_connection,
    read_answer,
    readers_stalled_at_first_token,
    sse_events,
)

MiB = 1 << 20


# -- the memory budget ------------------------------------------------------------------


async def test_finished_tasks_are_forgotten_oldest_first_and_answer_expired(start_daemon):
    """OC-LOAD-1201: found by a client that submitted 10,000 long tasks and never read
    them — retention counted tasks, not bytes, and RSS reached 7 GB."""
    api = await start_daemon(mock_pool(), memory_budget_bytes=MiB)
    ids = []
    for _ in range(3):  # each is charged ~0.95 MiB at admission, ~0.15 MiB once finished
        _, admitted, _ = await api.submit(model="mock-model", prompt="x", max_tokens=4000)
        ids.append(admitted["task_id"])
        await api.events(admitted["task_id"])
    book = api.daemon.service.book
    assert book.live_bytes + book.retained_bytes <= MiB
    _, text = await api.get("/metrics")  # operators see the budget and what it holds
    samples = {
        (s.name, s.labels.get("kind")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["memory_budget_bytes", None] == MiB
    assert samples["memory_accounted_bytes", "retained"] == book.retained_bytes > 0
    assert samples["connections_open", None] >= 1
    async with api.http.get(f"{api.base}/v1/tasks/{ids[0]}") as r:
        assert r.status == 410
        err = await r.json()
    assert err["code"] == "EXPIRED" and "memory budget" in err["message"]
    assert (await api.status(ids[-1]))["tokens_out"] == 4000
    async with api.http.get(f"{api.base}/v1/tasks/never-was") as r:
        assert r.status == 404


async def test_live_tasks_past_the_budget_are_refused_with_a_reason(start_daemon):
    """OC-LOAD-1201"""
    api = await start_daemon(mock_pool(), memory_budget_bytes=MiB)
    body = {"model": "mock-model", "prompt": "[[stall:1]] hold", "max_tokens": 3000}
    _, held, _ = await api.submit(**body)
    _, err, headers = await api.submit(expect=429, **body)
    assert err["code"] == "ADMISSION_REJECT" and err["policy_label"] == "memory-budget"
    assert err["retriable"] and "memory budget" in err["message"]
    assert int(headers["Retry-After"]) >= 1 and int(headers["X-Backoff-Ms"]) > 0
    await api.cancel(held["task_id"])
    await api.submit(**body)  # the canceled task's reservation was returned


async def test_a_task_whose_tokens_outgrow_its_reservation_is_charged_what_it_holds(
    start_daemon,
):
    """OC-LOAD-1211: a live task was charged its reservation alone, which assumes tokens of
    8 bytes: an engine sending 4 KiB tokens let the daemon hold many times its budget."""
    api = await start_daemon(mock_pool(), memory_budget_bytes=MiB)
    book = api.daemon.service.book
    _, done, _ = await api.submit(model="mock-model", prompt="x", max_tokens=20)
    await api.events(done["task_id"])  # finished, retained
    body = {"model": "mock-model", "prompt": "[[big:4096]] [[stall:160]]", "max_tokens": 200}
    _, big, _ = await api.submit(**body)
    async with api.http.get(f"{api.base}/v1/tasks/{big['task_id']}/stream") as r:
        tokens = 0
        async for event in sse_events(r):
            tokens += event["event"] == "token"
            if tokens == 160:  # all it sends before it stalls
                break
    rec = book.get(big["task_id"])
    assert rec is not None
    held = rec.stream.text_bytes + rec.output.text_bytes
    assert held == 2 * 160 * 4096  # the stream's copy and the output's
    reserved = book.reservation(request_bytes(rec.request), 200)
    assert book.live_bytes >= rec.footprint > held > reserved
    async with api.http.get(f"{api.base}/v1/tasks/{done['task_id']}") as r:
        assert r.status == 410  # forgotten to make room
    _, err, _ = await api.submit(expect=429, model="mock-model", prompt="x", max_tokens=20)
    assert err["policy_label"] == "memory-budget"
    await api.cancel(big["task_id"])  # it ends, holding more than the budget: forgotten
    await api.submit(model="mock-model", prompt="x", max_tokens=20)  # the room is back
    assert book.get(big["task_id"]) is None


def test_output_is_one_buffer_capped_in_utf8_bytes():
    """OC-LOAD-1202: the output cap counted characters, not bytes."""
    out = Output()
    out.extend([(0, "é", (7,)), (1, "", ())])
    out.extend([(2, "日本", (8, 9))])
    assert len(out) == 3 and out.text_bytes == 2 + 6 and out.text() == "é日本"
    assert list(from_columns(out.columns(1))) == [(1, "", ()), (2, "日本", (8, 9))]
    assert next(from_columns(out.columns(0))) == (0, "é", (7,))
    assert out.last_index == 2
    assert out.footprint < 3 * 40 + out.text_bytes  # no object per token


async def test_output_cap_counts_bytes(start_daemon):
    """OC-LOAD-1202"""
    api = await start_daemon(mock_pool(), max_output_bytes=1024)
    _, admitted, _ = await api.submit(model="mock-model", prompt="[[big:100]]", max_tokens=50)
    await api.events(admitted["task_id"])
    status = await api.status(admitted["task_id"])
    assert status["output_truncated"] and 1024 <= len(status["output"].encode()) < 1024 + 100


# -- slow readers -----------------------------------------------------------------------


async def test_a_reader_that_stops_reading_is_disconnected_and_the_task_runs_on(start_daemon):
    """OC-LOAD-1203: a reader that never read kept a forgotten task's buffers alive."""
    # (a stream that keeps all 12 MB of its text: the second reader reads it from the start)
    api = await start_daemon(mock_pool(), write_timeout_s=0.2, stream_buffer_bytes=16 << 20)
    _, admitted, _ = await api.submit(model="mock-model", prompt="[[big:4096]]", max_tokens=3000)
    task_id = admitted["task_id"]
    port = api.daemon.port
    with capture_logs() as logs:
        stream = get_request(f"/v1/tasks/{task_id}/stream")
        reader, writer = await raw_connection(port, stream, rcvbuf=4096)
        await _until_logged(api, logs, "slow reader disconnected")
    await api.events(task_id)  # another reader follows it to its end: the task ran on
    received = await _read_all(reader)  # only now does the slow one read
    writer.close()
    assert b"event: end" not in received  # it was let go before the end, its backlog dropped
    dropped = [e for e in logs if e["event"] == "slow reader disconnected"]
    assert [e["task_id"] for e in dropped] == [task_id]
    assert (await api.status(task_id))["state"] == "completed"


async def _until_logged(api: Any, logs: list[dict[str, Any]], event: str) -> None:
    """Until the daemon logs `event` (each look is a round trip: it runs meanwhile)."""
    async with asyncio.timeout(30):
        while not any(e["event"] == event for e in logs):
            await api.get("/healthz")


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What a connection the daemon let go of still delivers."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(1 << 16):
            received += chunk
    return received


async def test_a_client_that_stops_reading_any_answer_is_disconnected(start_daemon):
    """OC-LOAD-1203: only streams had a write timeout. A client that asked for a task's
    large output and never read it held the answer's bytes, its handler and its connection
    for as long as it kept the socket."""
    api = await start_daemon(
        mock_pool(), write_timeout_s=0.2, max_output_bytes=16 << 20, stream_buffer_bytes=16 << 20
    )
    _, admitted, _ = await api.submit(model="mock-model", prompt="[[big:4096]]", max_tokens=4000)
    task_id = admitted["task_id"]
    await api.wait_state(task_id, "completed")
    with capture_logs() as logs:
        reader, writer = await raw_connection(
            api.daemon.port, get_request(f"/v1/tasks/{task_id}"), rcvbuf=4096
        )
        await _until_logged(api, logs, "slow client disconnected")
    received = await _read_all(reader)
    writer.close()
    assert received.startswith(b"HTTP/1.1 200") and len(received) < 16 << 20  # cut short
    dropped = [e for e in logs if e["event"] == "slow client disconnected"]
    assert [e["path"] for e in dropped] == [f"/v1/tasks/{task_id}"]
    assert await api.metric("connections_dropped_total", reason="write_timeout") == 1


# -- identifiers and headers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Correlation-Id", "a" * 129),
        ("X-Correlation-Id", "two words"),
        ("X-Tenant-Id", "t" * 65),
        ("X-Tenant-Id", "café"),
    ],
)
async def test_client_identifiers_are_bounded(start_daemon, header, value):
    """OC-LOAD-1206: an 8 KB X-Correlation-Id was echoed and logged on every task."""
    api = await start_daemon(mock_pool())
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 1}
    async with api.http.post(f"{api.base}/v1/tasks", json=body, headers={header: value}) as r:
        assert r.status == 400
        err = await r.json()
        assert err["field"] == header and r.headers["X-Correlation-Id"] != value
    async with api.http.post(
        f"{api.base}/v1/tasks", json=body, headers={header: "ok-id_1.2:x@y/z+="}
    ) as r:
        assert r.status == 202


async def test_a_non_utf8_authorization_header_is_a_401(start_daemon, monkeypatch):
    """OC-LOAD-1206: it was a 500 with a traceback."""
    monkeypatch.setenv("ORCH_TEST_KEY", "s3cret")
    api = await start_daemon(mock_pool(), api_key_env="ORCH_TEST_KEY")
    request = b"GET /v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    reader, _ = await raw_connection(api.daemon.port, request)
    status, _, body = await read_answer(reader)
    assert status == 401 and b'"UNAUTHORIZED"' in body


@pytest.mark.parametrize("value", ["-5", "3_0", "+3", "1e2", "99"])
async def test_last_event_id_must_name_a_sent_event(start_daemon, value):
    """OC-LOAD-1207: -5 answered 410, 3_0 was read as 30, past the end was an empty 200."""
    api = await start_daemon(mock_pool())
    _, admitted, _ = await api.submit(model="mock-model", prompt="x", max_tokens=5)
    task_id = admitted["task_id"]
    events = await api.events(task_id)
    url = f"{api.base}/v1/tasks/{task_id}/stream"
    async with api.http.get(url, headers={"Last-Event-ID": value}) as r:
        assert r.status == 400
        assert (await r.json())["field"] == "Last-Event-ID"
    resumed = await api.events(task_id, last_event_id=2)
    assert resumed == events[3:]


async def test_the_first_event_carries_retry(start_daemon):
    """OC-LOAD-1207"""
    api = await start_daemon(mock_pool())
    body = {"model": "mock-model", "prompt": "x", "max_tokens": 2, "stream": True}
    async with api.http.post(f"{api.base}/v1/tasks", json=body) as r:
        text = (await r.read()).decode()
    first = text[text.index("event: started") :].split("\n\n")[0]
    assert first.splitlines()[-1] == "retry: 1000" and text.count("retry:") == 1


@pytest.mark.parametrize(("value", "status"), [(4.0, 202), (4.5, 400), ("4", 400)])
async def test_integral_floats_are_integers(start_daemon, value, status):
    """OC-LOAD-1208: 4352.0 was refused though JSON Schema's integer includes it."""
    api = await start_daemon(mock_pool())
    _, answer, _ = await api.submit(expect=status, model="mock-model", prompt="x", max_tokens=value)
    if status == 400:
        assert answer["field"] == "max_tokens"


async def test_an_ended_stream_is_served_from_the_output_buffer(start_daemon):
    """OC-LOAD-1202: a finished task held a tuple, a string and an ids tuple per token."""
    api = await start_daemon(mock_pool())
    _, admitted, _ = await api.submit(model="mock-model", prompt="compact", max_tokens=40)
    task_id = admitted["task_id"]
    live = await api.events(task_id)
    rec = api.daemon.service.book.get(task_id)
    assert rec is not None and rec.stream.compacted
    assert await api.events(task_id) == live  # the same events, ids and all
    assert await api.events(task_id, last_event_id=20) == live[21:]
    async with api.http.get(
        f"{api.base}/v1/tasks/{task_id}/stream",
        headers={"Accept": "text/event-stream; format=openai", "Last-Event-ID": "38"},
    ) as r:
        text = await r.text()
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert deltas[:2] == [live[39][2]["t"], live[40][2]["t"]]
    assert text.endswith("data: [DONE]\n\n")


async def test_a_stream_that_ends_while_read_is_compacted_once_its_reader_leaves(start_daemon):
    """OC-LOAD-1202: compacting a stream its reader is still to read made the reader
    rebuild every token event from the output buffer; the last reader to leave compacts."""
    api = await start_daemon(mock_pool())
    service = api.daemon.service
    submission = Submission(
        model="mock-model", tenant="t", correlation_id="c", prompt="compact", max_tokens=8
    )
    rec = service.admission.admit(submission)
    with service.reading(rec):  # (attached before the runner's first step)
        events = [event async for batch in rec.stream.read() for event in batch]
        assert rec.ended and len(events) == 10  # started, 8 tokens, end
        assert not rec.stream.compacted  # read while it ended: kept as it was
    assert rec.stream.compacted


async def test_a_reader_that_falls_behind_the_buffer_gets_a_typed_error(start_daemon, monkeypatch):
    """OC-LOAD-1203"""
    api = await start_daemon(mock_pool(), stream_buffer_events=16)
    resumed = readers_stalled_at_first_token(monkeypatch)  # this client stops reading
    _, admitted, _ = await api.submit(model="mock-model", prompt="x", max_tokens=200)
    task_id = admitted["task_id"]

    async def read() -> str:
        async with api.http.get(f"{api.base}/v1/tasks/{task_id}/stream") as r:
            return await r.text()

    reading = asyncio.create_task(read())
    await api.daemon.service.pools["mock"].wait_idle()  # 200 tokens went past its place
    resumed.set()
    last = (await reading).strip().split("\n\n")[-1]  # (no id: it is not a task event)
    kind, data = last.split("\n")
    error = json.loads(data.removeprefix("data: "))
    assert kind == "event: error" and error["code"] == "STREAM_GAP"
    assert "fell behind" in error["message"] and error["first_retained"] > 1
