"""The real `orchestratord` and `orchctl` executables, as a person or CI runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
import yaml

from tests.helpers import (
    BIN,
    mock_pool,
    orchctl,
    readers_stalled_at_first_token,
    start_serve,
    wait_log,
)
from worker_adapters.mock import token_stream


async def read_events(session: aiohttp.ClientSession, url: str, until: str | None = None):
    out = []
    async with session.get(url) as r:
        event = {}
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if event:
                    out.append((event["event"], json.loads(event["data"])))
                    if event["event"] == until:
                        return out
                event = {}
            else:
                if line.startswith(":"):
                    continue  # an SSE comment (queue position, keep-alive)
                key, _, value = line.partition(": ")
                event[key] = value
    return out


async def test_sigterm_drains_running_tasks_then_cancels_the_rest(tmp_path):
    """OC-CTRL-2017"""
    config = {"server": {"shutdown_grace_s": 2}, "pools": [mock_pool(mock={"token_rate": 20})]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc, url = await start_serve(tmp_path / "c.yaml")
    async with aiohttp.ClientSession() as http:

        async def submit(prompt: str, n: int) -> str:
            async with http.post(
                f"{url}/v1/tasks", json={"model": "mock-model", "prompt": prompt, "max_tokens": n}
            ) as r:
                assert r.status == 202
                return (await r.json())["task_id"]

        finishing = await submit("finishes within the grace period", 10)
        stuck = await submit("[[stall:1]]", 10)
        for tid in (finishing, stuck):
            await read_events(http, f"{url}/v1/tasks/{tid}/stream", until="started")
        proc.send_signal(signal.SIGTERM)
        await wait_log(proc, "signal received")
        async with http.post(f"{url}/v1/tasks", json={"model": "mock-model", "prompt": "x"}) as r:
            assert r.status == 503
            body = await r.json()
            assert body["code"] == "POOL_UNAVAILABLE" and body["retriable"] is True
        done = await read_events(http, f"{url}/v1/tasks/{finishing}/stream")
        assert done[-1][0] == "end" and done[-1][1]["finish_reason"] == "length"
        cut = await read_events(http, f"{url}/v1/tasks/{stuck}/stream")
        assert cut[-1][0] == "error" and cut[-1][1]["code"] == "POOL_UNAVAILABLE"
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_bad_config_exits_nonzero_naming_each_key(tmp_path):
    """OC-CTRL-2019, OC-CONFIG-7001"""
    bad = {
        "server": {"port": "eighty"},
        "pools": [
            {"id": "p", "engine": "nope", "model": "m", "replicas": {"managed": {"count": 0}}}
        ],
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchestratord",
        "serve",
        "--config",
        str(tmp_path / "bad.yaml"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert any("server.port" in line for line in lines)
    assert any("pools[0].engine" in line for line in lines)
    assert any("pools[0].replicas.managed.count" in line for line in lines)
    assert all(line.startswith("error: ") for line in lines)
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchestratord",
        "serve",
        "--config",
        str(tmp_path / "missing.yaml"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and "cannot read" in err.decode()


async def test_orchctl_submit_and_exit_codes(start_daemon):
    """OC-CLI-5001, OC-CLI-5002"""
    api = await start_daemon(mock_pool(), mock_pool("full", queue={"capacity": 0}))
    code, out, err = await orchctl(
        api.base, "submit", "--model", "mock-model", "--seed", "3", "--max-tokens", "5", "hello"
    )
    assert code == 0, err
    assert out.strip() == "".join(token_stream(3, "hello", 5))
    assert "length: 5 tokens" in err
    code, out, _ = await orchctl(
        api.base, "submit", "--model", "mock-model", "--json", "--max-tokens", "2", "hi"
    )
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert events == ["admitted", "started", "token", "token", "end"]
    assert (await orchctl(api.base, "submit", "--model", "nope", "x"))[0] == 4
    code, _, err = await orchctl(api.base, "submit", "--model", "full-model", "x")
    assert code == 3 and "ADMISSION_REJECT" in err
    code, _, err = await orchctl(api.base, "submit", "--model", "mock-model", "[[fail:1]]")
    assert code == 4 and "WORKER_RESET" in err
    # the prompt from stdin; sampling options go through (and are checked by the daemon)
    words = token_stream(3, "hello", 5)
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchctl", "--url", api.base, "submit", "--model", "mock-model", "--seed", "3",
        "--max-tokens", "5", "--stop", words[2].strip(), "--temperature", "0.5", "-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate(b"hello")
    assert proc.returncode == 0 and out.decode().strip() == "".join(words[:2])
    code, _, err = await orchctl(api.base, "submit", "--model", "mock-model", "--top-p", "2", "x")
    assert code == 4 and "[field: sampling.top_p]" in err
    assert (await orchctl("http://127.0.0.1:9", "pools"))[0] == 5
    assert (await orchctl(api.base, "submit"))[0] == 2
    code, out, _ = await orchctl(api.base, "--help")
    assert "5  the daemon is unreachable" in out
    # the environment variable picks the daemon too
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchctl",
        "pools",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "ORCH_URL": api.base},
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and "mock-model" in out.decode()


async def test_orchctl_status_cancel_drain_reload(start_daemon):
    """OC-CLI-5001, OC-CLI-5007, OC-CLI-5008, OC-CLI-5009"""
    api = await start_daemon(mock_pool(models={"v2": "mock-v2", "broken": "fail:x"}))
    _, task, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(task["task_id"], "running")
    code, out, _ = await orchctl(api.base, "status", task["task_id"])
    assert code == 0 and json.loads(out)["state"] == "running"
    code, out, _ = await orchctl(api.base, "cancel", task["task_id"])
    assert code == 0 and out == f"canceled {task['task_id']}\n"
    assert (await api.status(task["task_id"]))["state"] == "canceled"
    _, done, _ = await api.submit(model="mock-model", prompt="hi", max_tokens=2)
    await api.wait_state(done["task_id"], "completed")
    code, out, _ = await orchctl(api.base, "cancel", done["task_id"])  # idempotent, and honest
    assert code == 0 and "had already ended (completed): nothing to cancel" in out
    code, out, err = await orchctl(api.base, "cancel", "missing", done["task_id"])
    assert code == 4 and "had already ended (completed)" in out  # the rest go on
    assert "missing: NOT_FOUND" in err and "1 of 2 could not be canceled" in err
    assert (await api.status(done["task_id"]))["state"] == "completed"
    assert (await orchctl(api.base, "status", "missing"))[0] == 4

    # reload --wait ends with the reload: 0 once switched over, 4 once rolled back
    code, out, _ = await orchctl(api.base, "reload", "mock", "v2", "--wait")
    assert code == 0 and out.endswith("reloaded mock to v2\n")
    _, pool = await api.get("/v1/pools/mock")
    assert pool["reload"] == {"model": "mock-v2", "state": "done", "error": None}
    code, _, err = await orchctl(api.base, "reload", "mock", "broken", "--wait")
    assert code == 4 and "reload of mock to broken failed" in err and "rolled back" in err
    _, pool = await api.get("/v1/pools/mock")
    assert pool["reload"]["state"] == "failed" and pool["reload"]["model"] == "fail:x"
    code, _, err = await orchctl(api.base, "reload", "mock", "/srv/elsewhere.gguf")
    assert code == 4 and "INVALID_PARAMS" in err
    assert "may reload to one of ['broken', 'mock-model', 'v2']" in err

    # drain --wait returns once nothing is queued or running (here: at the deadline)
    _, stalled, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(stalled["task_id"], "running")
    code, out, _ = await orchctl(api.base, "drain", "mock", "--deadline-ms", "10", "--wait")
    assert code == 0 and out.endswith("drained mock: nothing queued or running\n")
    assert (await api.status(stalled["task_id"]))["state"] == "canceled"
    code, out, _ = await orchctl(api.base, "pools", "--json")
    assert code == 0 and json.loads(out)[0]["draining"] is True


async def test_orchctl_detach_attach_and_an_interrupted_submit(start_daemon):
    """OC-CLI-5010"""
    api = await start_daemon(mock_pool(), stream_buffer_events=16)
    submit = ("submit", "--model", "mock-model", "--detach")
    code, out, _ = await orchctl(api.base, *submit, "--seed", "3", "--max-tokens", "5", "hello")
    assert code == 0
    task_id = out.strip()
    await api.wait_state(task_id, "completed")
    code, out, err = await orchctl(api.base, "attach", task_id)
    assert code == 0 and out.strip() == "".join(token_stream(3, "hello", 5))
    assert "length: 5 tokens" in err and task_id in err
    code, out, _ = await orchctl(api.base, "attach", "--json", task_id)
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert events[0] == "started" and events[-1] == "end" and "token" in events
    _, failing, _ = await orchctl(api.base, *submit, "[[fail:1]]")
    for json_or_not in ((), ("--json",)):  # a failed task exits 4 either way
        code, out, err = await orchctl(api.base, "attach", *json_or_not, failing.strip())
        assert code == 4 and "WORKER_RESET" in err
    assert json.loads(out.splitlines()[-1])["event"] == "error"
    code, _, err = await orchctl(api.base, "attach", "missing")
    assert code == 4 and "NOT_FOUND" in err
    # of a long stream the daemon keeps the latest events: attach starts at the oldest
    code, out, _ = await orchctl(api.base, *submit, "--seed", "3", "--max-tokens", "200", "long")
    await api.daemon.service.pools["mock"].wait_idle()  # (its whole stream went by)
    code, out, err = await orchctl(api.base, "attach", out.strip())
    assert code == 0 and "[events before 186 are no longer kept: from there on]" in err
    assert out.strip() == "".join(token_stream(3, "long", 200)[-15:]).strip()

    # Ctrl-C stops the reader, not the task, and says how to get back to it
    proc = await asyncio.create_subprocess_exec(
        BIN / "orchctl", "--url", api.base, "submit", "--model", "mock-model", "[[stall:1]]",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert await proc.stdout.read(1)  # the first token is out: the task runs
    proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    stalled = next(t["task_id"] for t in (await api.get("/v1/tasks"))[1]["tasks"])
    assert f"`orchctl attach {stalled}` follows it again" in err.decode()
    assert (await api.status(stalled))["state"] == "running"
    code, out, _ = await orchctl(api.base, "cancel", stalled)
    assert code == 0 and out == f"canceled {stalled}\n"


async def test_orchctl_reads_on_past_the_events_it_fell_behind_on(start_daemon, monkeypatch):
    """OC-CLI-5010: a reader that falls behind the stream's buffer is told where the
    retained events begin (OC-LOAD-1203); orchctl says what it skipped and reads on."""
    api = await start_daemon(mock_pool(), stream_buffer_events=16)
    resumed = readers_stalled_at_first_token(monkeypatch)  # as if its terminal stalled
    _, task, _ = await api.submit(model="mock-model", prompt="long", max_tokens=200, seed=3)
    attach = asyncio.create_task(orchctl(api.base, "attach", task["task_id"]))
    await api.daemon.service.pools["mock"].wait_idle()  # 200 tokens went past its place
    resumed.set()
    code, out, err = await attach
    assert code == 0 and "[events before 186 are no longer kept: from there on]" in err
    assert out.strip().endswith("".join(token_stream(3, "long", 200)[-15:]).strip())
    assert "length: 200 tokens" in err


async def test_orchctl_batch_honours_backpressure_and_writes_jsonl(start_daemon, tmp_path):
    """OC-CLI-5003"""
    api = await start_daemon(
        mock_pool(
            queue={"capacity": 2},
            replicas={"managed": {"count": 1, "slots": 1}},
            mock={"token_rate": 500},
        )
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"prompt": f"job {i}", "max_tokens": 4, "seed": i}) + "\n" for i in range(8)
        )
    )
    out = tmp_path / "out.jsonl"
    code, _, err = await orchctl(
        api.base,
        "batch",
        str(jobs),
        "--out",
        str(out),
        "--model",
        "mock-model",
        "--client-side",
        "--concurrency",
        "6",
    )
    assert code == 0, err
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in results] == list(range(1, 9))
    for i, r in enumerate(results):
        assert r["state"] == "completed"
        assert r["output"] == "".join(token_stream(i, f"job {i}", 4))
    assert "8 jobs: 8 completed" in err
    # concurrency 6 against room for 3 means the daemon pushed back and the CLI retried
    rejected = api.daemon.service.metrics.registry.get_sample_value(
        "tasks_rejected_total", {"pool_id": "mock", "reason": "queue_full"}
    )
    assert rejected > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert (await orchctl(api.base, "batch", str(bad), "--out", str(out)))[0] == 2


async def test_json_logs_follow_a_task_by_correlation_id(tmp_path):
    """OC-CTRL-2028"""
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"pools": [mock_pool()]}))
    proc, url = await start_serve(tmp_path / "c.yaml")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/v1/tasks",
                headers={"X-Correlation-Id": "trace-42"},
                json={
                    "model": "mock-model",
                    "prompt": "log me",
                    "max_tokens": 3,
                    "session_id": "s-1",
                },
            ) as r:
                task_id = (await r.json())["task_id"]
            await read_events(http, f"{url}/v1/tasks/{task_id}/stream")
        assert proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                if '"task ended"' in line:
                    break
        record = json.loads(line)
        assert record["correlation_id"] == "trace-42" and record["task_id"] == task_id
        assert record["pool_id"] == "mock" and record["replica_id"] == "mock-r0"
        assert record["engine"] == "mock" and record["state"] == "completed"
        assert record["session_id"] == "s-1" and record["level"] == "info"
    finally:
        proc.terminate()
        await proc.wait()


async def test_mock_overload_fault_answers_with_backpressure_error(start_daemon):
    """OC-CTRL-2021"""
    api = await start_daemon(mock_pool(mock={"overloaded": True}, max_retries=0))
    _, task, _ = await api.submit(model="mock-model", prompt="x", max_tokens=2)
    events = await api.events(task["task_id"])
    assert events[-1][0] == "error" and events[-1][2]["code"] == "REPLICA_EXHAUSTED"
    assert events[-1][2]["retriable"] is True
