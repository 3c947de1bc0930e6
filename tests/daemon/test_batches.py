"""The Batch API through the official `openai` SDK, against a live daemon."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import openai
import pytest

from tests.helpers import mock_pool, orchctl
from worker_adapters.mock import token_stream

FINAL = {"completed", "failed", "expired", "cancelled"}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(i: int, content: str | None = None, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "mock-model", "max_tokens": 5,
                 "messages": [{"role": "user", "content": content or f"question {i}"}], **body},
    }  # fmt: skip


def sdk(api) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key="-", max_retries=0)


async def until_final(api, client: openai.AsyncOpenAI, batch_id: str):
    """The batch once it reached a final status (woken by the daemon, never polled)."""
    batches = api.daemon.service.batches
    while True:
        changed = batches.changed
        batch = await client.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        await changed.wait()


async def test_the_openai_sdk_runs_a_batch_end_to_end(start_daemon):
    """OC-BATCH-1101, OC-BATCH-1102"""
    api = await start_daemon(mock_pool())
    client = sdk(api)
    lines = [chat_line(i) for i in range(12)]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl(lines))
    assert (await client.files.retrieve(uploaded.id)).filename == "in.jsonl"
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"run": "nightly"},
    )  # fmt: skip
    assert batch.status in ("in_progress", "completed") and batch.metadata == {"run": "nightly"}
    done = await until_final(api, client, batch.id)
    assert done.status == "completed" and done.error_file_id is None
    assert (done.request_counts.total, done.request_counts.completed) == (12, 12)
    output = (await client.files.content(done.output_file_id)).text.splitlines()
    results = [json.loads(line) for line in output]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(12)]
    direct = await client.chat.completions.create(**lines[3]["body"])
    body = results[3]["response"]["body"]
    assert results[3]["response"]["status_code"] == 200 and results[3]["error"] is None
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    listed = await client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]
    assert (await client.batches.cancel(batch.id)).status == "completed"  # nothing to cancel
    assert (await client.files.delete(uploaded.id)).deleted


async def test_items_run_at_batch_priority_behind_interactive_work(start_daemon):
    """OC-BATCH-1103"""
    api = await start_daemon(mock_pool(replicas={"managed": {"slots": 1}}), batch={"window": 4})
    client = sdk(api)
    pool = api.daemon.service.pools["mock"]
    hold = await client.completions.create(
        model="mock-model", prompt="[[stall:0]]", max_tokens=2, stream=True
    )  # holds the only slot
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(10)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert pool.queue.depth("batch") == 4  # a window at a time, never the whole file
    _, task, _ = await api.submit(model="mock-model", prompt="interactive", max_tokens=2)
    assert pool.queue.position(task["task_id"]) == 0  # ahead of every batch item
    await hold.close()
    done = await until_final(api, client, batch.id)
    assert done.request_counts.completed == 10


async def test_cancel_keeps_what_finished_and_reports_the_rest_once(start_daemon):
    """OC-BATCH-1102"""
    api = await start_daemon(mock_pool(replicas={"managed": {"slots": 2}}), batch={"window": 3})
    client = sdk(api)
    lines = [chat_line(0), chat_line(1), *(chat_line(i, "[[stall:1]]") for i in range(2, 8))]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    pool = api.daemon.service.pools["mock"]
    await pool.manager.wait_for(lambda: len(pool.running) == 2 and pool.queue.depth("batch") == 1)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = await until_final(api, client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    seen = []
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id:
            seen += [json.loads(x) for x in (await client.files.content(file_id)).text.splitlines()]
    assert sorted(r["custom_id"] for r in seen) == sorted(line["custom_id"] for line in lines)
    errors = [r for r in seen if r["error"]]
    assert {r["error"]["code"] for r in errors} <= {"CANCELED", "batch_cancelled"}
    assert len(errors) == len(seen) - done.request_counts.completed


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"custom_id": "a"\n', "line 1: "),
        (jsonl([chat_line(0, model="nope")]), "line 1: body.model 'nope' is not served here"),
        (jsonl([chat_line(0), chat_line(0)]), "line 2: custom_id 'req-0' repeats line 1"),
        (jsonl([chat_line(0, stream=True)]), "line 1: body.stream"),
        (jsonl([chat_line(0, tools=[{"type": "function"}])]), "line 1: tools"),
        (jsonl([chat_line(0), {**chat_line(1), "url": "/v1/completions"}]), "several urls"),
        (b"", "no requests"),
        (jsonl([chat_line(i, "x" * 200) for i in range(20)]), "larger than 2048 bytes"),
    ],
)
async def test_a_bad_file_is_refused_naming_the_line_and_nothing_is_kept(
    start_daemon, content, problem
):
    """OC-BATCH-1104"""
    api = await start_daemon(mock_pool(), batch={"max_file_bytes": 2048})
    client = sdk(api)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=("bad.jsonl", content), purpose="batch")
    error = refused.value.body
    assert error["code"] == "INVALID_PARAMS" and problem in error["message"], error
    assert (await client.files.list()).data == []
    files_dir = api.daemon.service.store.files_dir
    assert not files_dir.exists() or not any(files_dir.iterdir())


async def test_a_batch_needs_an_existing_file_of_its_endpoint(start_daemon):
    """OC-BATCH-1104"""
    api = await start_daemon(mock_pool())
    client = sdk(api)
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    uploaded = await client.files.create(file=("in.jsonl", jsonl([chat_line(0)])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
    assert refused.value.body["param"] == "endpoint"
    assert (await client.batches.list()).data == []


async def test_orchctl_batch_runs_through_the_batch_api(start_daemon, tmp_path):
    """OC-BATCH-1106"""
    api = await start_daemon(mock_pool())
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(  # task requests, turned into /v1/completions lines
        "".join(
            json.dumps({"prompt": f"job {i}", "max_tokens": 4, "seed": i}) + "\n" for i in range(6)
        )
    )
    out = tmp_path / "out.jsonl"
    code, _, err = await orchctl(
        api.base, "batch", str(jobs), "--out", str(out), "--model", "mock-model", "--no-progress"
    )
    assert code == 0, err
    assert "6 jobs: 6 completed" in err
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"line-{i}" for i in range(1, 7)]
    for i, r in enumerate(results):
        text = r["response"]["body"]["choices"][0]["text"]
        assert text == "".join(token_stream(i, f"job {i}", 4))
    code, listing, _ = await orchctl(api.base, "batches", "list")
    (batch_id, status, counts, _) = listing.split()
    assert (status, counts) == ("completed", "6/0/6")
    code, shown, _ = await orchctl(api.base, "batches", "get", batch_id)
    assert json.loads(shown)["output_file_id"]
    code, cancelled, _ = await orchctl(api.base, "batches", "cancel", batch_id)
    assert code == 0 and cancelled.strip() == f"{batch_id}: completed"
    assert (await orchctl(api.base, "batches", "get", "batch-nope"))[0] == 4


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code", "param"),
    [
        ("multipart/form-data", b"", 400, "INVALID_PARAMS", "file"),  # no boundary
        # a broken part
        ("multipart/form-data; boundary=b", b"--b\r\n\x15\xa6--b--\r\n", 400, "INVALID_PARAMS",
         "file"),
        # not an upload at all (OC-AUTH-1304)
        ("application/json", b"{}", 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
    ],
)  # fmt: skip
async def test_a_malformed_upload_is_a_400_never_a_500(
    start_daemon, content_type, body, status, code, param
):
    """OC-BATCH-1104 (found by schemathesis)"""
    api = await start_daemon(mock_pool())
    headers = {"Content-Type": content_type}
    async with api.http.post(f"{api.base}/v1/files", data=body, headers=headers) as r:
        assert r.status == status
        error = (await r.json())["error"]
    assert error["code"] == code and error["param"] == param


async def test_a_finished_batch_keeps_its_counts_across_a_restart(start_daemon):
    """OC-BATCH-1105"""
    api = await start_daemon(mock_pool())
    client = sdk(api)
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(6)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert (await until_final(api, client, batch.id)).request_counts.completed == 6
    await api.daemon.stop(grace_s=0)
    # its items left the store with its output file; its own record keeps the counts
    again = await start_daemon(mock_pool())
    counts = (await sdk(again).batches.retrieve(batch.id)).request_counts
    assert (counts.total, counts.completed, counts.failed) == (6, 6, 0)


async def test_a_drained_pool_holds_a_batch_back_and_fails_none_of_its_lines(start_daemon):
    """OC-BATCH-1107"""
    api = await start_daemon(mock_pool())
    client = sdk(api)
    async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={}) as r:
        assert r.status == 202, await r.text()
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(6)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    held = await client.batches.retrieve(batch.id)
    assert held.status == "in_progress"
    assert (held.request_counts.completed, held.request_counts.failed) == (0, 0)
    async with api.http.post(f"{api.base}/v1/pools/mock/resume") as r:
        assert r.status in (200, 202), await r.text()
    done = await until_final(api, client, batch.id)
    assert (done.status, done.request_counts.completed, done.request_counts.failed) == (
        "completed",
        6,
        0,
    )


async def test_output_that_cannot_be_written_is_written_again_later(start_daemon):
    """OC-BATCH-1108"""
    api = await start_daemon(mock_pool(replicas={"managed": {"slots": 1}}))
    client = sdk(api)
    batches = api.daemon.service.batches
    hold = await client.completions.create(
        model="mock-model", prompt="[[stall:0]]", max_tokens=2, stream=True
    )  # the batch's items wait behind it
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(3)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    # where the output file goes, a directory: writing it fails as a full disk would
    blocked = batches.files.path(f"file-{batch.id}-output")
    blocked.mkdir(parents=True)
    failed = batches.changed
    await hold.close()
    await failed.wait()
    stuck = await client.batches.retrieve(batch.id)
    assert (stuck.status, stuck.request_counts.completed) == ("finalizing", 3)
    async with api.http.get(f"{api.base}/metrics") as r:
        assert "\nbatch_output_failures_total 1.0\n" in await r.text()
    blocked.rmdir()
    done = await until_final(api, client, batch.id)
    assert done.status == "completed"
    output = (await client.files.content(done.output_file_id)).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == ["req-0", "req-1", "req-2"]


async def test_a_batch_whose_end_cannot_be_journaled_is_finalized_again_by_the_restart(
    start_daemon,
):
    """OC-BATCH-1105: the output files were written but the batch's final status failed to
    reach the journal — its items stay, and the restart ends it with every line once."""
    api = await start_daemon(mock_pool())
    client = sdk(api)
    db = api.daemon.service.store.path
    with sqlite3.connect(db) as conn:  # the store's own write fails, as a full disk's would
        conn.execute(
            "CREATE TRIGGER no_end BEFORE UPDATE ON batches "
            "WHEN json_extract(NEW.doc, '$.batch.status') = 'completed' "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    uploaded = await client.files.create(
        file=("in.jsonl", jsonl([chat_line(i) for i in range(4)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await until_final(api, client, batch.id)
    # a later durable write returns after the end's (group commits run in order)
    await client.files.create(file=("later.jsonl", jsonl([chat_line(9)])), purpose="batch")
    await api.daemon.stop(grace_s=0)
    with sqlite3.connect(db) as conn:
        (doc,) = conn.execute("SELECT doc FROM batches WHERE id = ?", (batch.id,)).fetchone()
        assert json.loads(doc)["batch"]["status"] == "finalizing"
        conn.execute("DROP TRIGGER no_end")

    again = await start_daemon(mock_pool())
    done = await until_final(again, sdk(again), batch.id)
    assert (done.status, done.request_counts.completed) == ("completed", 4)
    output = (await sdk(again).files.content(done.output_file_id)).text.splitlines()
    assert [json.loads(line)["custom_id"] for line in output] == [f"req-{i}" for i in range(4)]
