"""OC-OAI-9001..9011: the OpenAI-compatible door, driven by the official `openai` SDK (async
and sync, stream and not, chat and completions), over a live daemon with mock pools."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from orchestratord.api.openai_door import is_openai_path
from tests.helpers import mock_pool
from worker_adapters.base import ChatMessage, GenerateRequest
from worker_adapters.mock import render_chat, token_stream

CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hello"}]},
]
RENDERED = render_chat(
    GenerateRequest(
        "", 1, messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hello"))
    )
)


def clients(api, **kw):
    base = f"{api.base}/v1"
    return (
        openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, **kw),
        openai.OpenAI(base_url=base, api_key="unused", max_retries=0, **kw),
    )


async def test_chat_and_completions_stream_and_not_are_tasks(start_daemon):
    """OC-OAI-9001, OC-OAI-9003, OC-OAI-9011"""
    api = await start_daemon(mock_pool())
    client, sync = clients(api)
    expected = "".join(token_stream(7, RENDERED, 5))

    raw = await client.chat.completions.with_raw_response.create(
        model="mock-model", messages=CONVERSATION, max_tokens=5, seed=7
    )
    chat = raw.parse()
    assert chat.object == "chat.completion" and chat.model == "mock-model"
    assert chat.choices[0].message.content == expected
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 5
    task_id = raw.headers["X-Task-Id"]
    assert chat.id == f"chatcmpl-{task_id}"
    assert raw.request_id == raw.headers["X-Correlation-Id"]  # what the SDK reports (9011)
    status = await api.status(task_id)  # every request is a task
    assert status["state"] == "completed" and status["output"] == expected

    stream = await client.chat.completions.create(
        model="mock-model", messages=CONVERSATION, max_tokens=5, seed=7, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert stream.response.headers["x-request-id"] == stream.response.headers["X-Correlation-Id"]
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5

    # the sync client, as most scripts use it (in a thread: the daemon runs on this loop)
    def sync_calls():
        done = sync.completions.create(model="mock-model", prompt="plain", max_tokens=4, seed=2)
        streamed = sync.completions.create(
            model="mock-model", prompt=["plain"], max_tokens=4, seed=2, stream=True
        )
        return done, [c.choices[0].text for c in streamed if c.choices]

    done, pieces = await asyncio.to_thread(sync_calls)
    plain = "".join(token_stream(2, "plain", 4))
    assert done.object == "text_completion" and done.choices[0].text == plain
    assert "".join(pieces) == plain
    models = await client.models.list()
    (card,) = models.data
    assert card.id == "mock-model" and card.model_extra["pools"] == ["mock"]
    assert card.model_extra["ready"] is True and card.model_extra["chat_template"] == "engine"


async def test_the_sdk_retrieves_one_model_by_an_id_that_may_hold_slashes(start_daemon):
    """OC-OAI-9001, OC-OAI-9002"""
    api = await start_daemon(mock_pool(), mock_pool("org", model="org/tiny-chat"))
    client, _ = clients(api)
    card = await client.models.retrieve("org/tiny-chat")
    assert (card.id, card.object, card.model_extra["pools"]) == ("org/tiny-chat", "model", ["org"])
    assert (await client.models.retrieve("mock-model")).model_extra["ready"] is True
    with pytest.raises(openai.NotFoundError) as err:
        await client.models.retrieve("org/nope")
    assert err.value.code == "UNKNOWN_MODEL" and err.value.param == "model"


async def test_an_openai_path_not_served_here_is_refused_in_openai_shape(start_daemon):
    """OC-OAI-9009"""
    api = await start_daemon(mock_pool())
    client, _ = clients(api)
    with pytest.raises(openai.NotFoundError) as err:
        await client.embeddings.create(model="mock-model", input="hello")
    assert err.value.code == "NOT_FOUND"
    assert "POST /v1/embeddings" in err.value.message  # what was asked, and what is served
    assert "POST /v1/chat/completions" in err.value.message
    status, body = await api.get("/v1/tasks/some-task/nowhere")  # the native API's shape
    assert status == 404 and body["code"] == "NOT_FOUND"
    assert "GET /openapi.json" in body["message"]
    # whose each documented path is: the native resources' errors keep our envelope
    _, document = await api.get("/openapi.json")
    openai_paths = ("/v1/chat/", "/v1/completions", "/v1/models", "/v1/files", "/v1/batches")
    for path in document["paths"]:
        assert is_openai_path(path) == path.startswith(openai_paths), path


async def test_errors_are_openai_shaped_with_our_codes(start_daemon):
    """OC-OAI-9002, OC-OAI-9010, OC-OAI-9011"""
    api = await start_daemon(
        mock_pool(queue={"capacity": 1}, replicas={"managed": {"count": 1, "slots": 1}})
    )
    client, _ = clients(api)
    with pytest.raises(openai.NotFoundError) as err:
        await client.chat.completions.create(model="nope", messages=CONVERSATION)
    assert err.value.code == "UNKNOWN_MODEL" and err.value.param == "model"
    assert err.value.request_id == err.value.response.headers["X-Correlation-Id"]  # (9011)
    refused = {
        "n": {"n": 2},
        "tools": {"tools": [{"type": "function", "function": {"name": "f"}}]},
        "logprobs": {"logprobs": True},
        "response_format": {"response_format": {"type": "json_object"}},
    }
    for field, extra in refused.items():
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(model="mock-model", messages=CONVERSATION, **extra)
        assert err.value.code == "INVALID_PARAMS" and err.value.param == field
        assert "not supported" in err.value.message
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model="mock-model", messages=image)
    assert err.value.param == "messages[0].content[0].type"
    with pytest.raises(openai.BadRequestError) as err:  # a field OpenAI does not define
        await client.chat.completions.create(
            model="mock-model", messages=CONVERSATION, extra_body={"bogus": 1}
        )
    assert err.value.param == "bogus"
    with pytest.raises(openai.BadRequestError) as err:  # its options belong to a stream
        await client.chat.completions.create(
            model="mock-model", messages=CONVERSATION, stream_options={"include_usage": True}
        )
    assert err.value.param == "stream_options"
    with pytest.raises(openai.BadRequestError) as err:  # padding we never add
        await client.chat.completions.create(
            model="mock-model", messages=CONVERSATION, stream=True,
            stream_options={"include_usage": True, "include_obfuscation": True},
        )  # fmt: skip
    assert err.value.param == "stream_options.include_obfuscation"
    with pytest.raises(openai.BadRequestError) as err:  # the reference allows token ids
        await client.completions.create(model="mock-model", prompt=[1, 2, 3])
    assert err.value.param == "prompt" and "token ids" in err.value.message
    # backpressure: the only slot busy and the queue full: a 429, the SDK's RateLimitError
    held = [
        await client.completions.create(
            model="mock-model", prompt="[[stall:0]]", max_tokens=4, stream=True
        )
        for _ in range(2)
    ]
    with pytest.raises(openai.RateLimitError) as err:
        await client.completions.create(model="mock-model", prompt="x", max_tokens=2)
    assert err.value.code == "ADMISSION_REJECT" and err.value.type == "rate_limit_error"
    headers = err.value.response.headers
    assert int(headers["Retry-After"]) >= 1 and int(headers["X-Backoff-Ms"]) > 0
    # what OpenAI's SDKs read: retry, after our backoff to the millisecond (OC-OAI-9010)
    assert headers["retry-after-ms"] == headers["X-Backoff-Ms"]
    assert headers["x-should-retry"] == "true"
    for stream in held:
        await stream.close()


async def test_the_sdk_retries_only_what_a_retry_can_fix(start_daemon):
    """OC-OAI-9010: with its default retries, the SDK does not resubmit a request whose task
    an operator canceled (it would retry any 409) or one refused by a drained pool (any
    503), and it waits out a 429 by our backoff to the millisecond."""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    svc = api.daemon.service
    submitted: asyncio.Queue = asyncio.Queue()
    submit, attempts = svc.submit, []

    async def observed_submit(*args, **kw):  # the real admission; the test counts attempts
        attempts.append(args)
        rec = await submit(*args, **kw)
        submitted.put_nowait(rec)
        return rec

    svc.submit = observed_submit
    client = openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key="unused")  # 2 retries
    stalled = [{"role": "user", "content": "[[stall:0]] wait"}]
    request = asyncio.create_task(
        client.chat.completions.create(model="mock-model", messages=stalled, max_tokens=5)
    )

    async def operator() -> None:  # cancels every task the request makes
        while True:
            task_id = (await submitted.get()).task.id
            await api.wait_state(task_id, "running")
            assert await api.cancel(task_id) == 204

    canceling = asyncio.create_task(operator())
    done, _ = await asyncio.wait({request, canceling}, return_when=asyncio.FIRST_COMPLETED)
    if canceling in done:  # the operator failed: say how
        request.cancel()
        canceling.result()
    canceling.cancel()
    with pytest.raises(openai.ConflictError) as err:
        await request
    assert err.value.code == "CANCELED" and len(attempts) == 1
    assert err.value.response.headers["x-should-retry"] == "false"

    await api.daemon.service.pools["mock"].wait_idle()
    async with api.http.post(f"{api.base}/v1/pools/mock/drain", json={}) as r:
        assert r.status in (200, 202)
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="mock-model", messages=CONVERSATION)
    assert err.value.code == "POOL_DRAINING" and len(attempts) == 2
    assert err.value.response.headers["x-should-retry"] == "false"


async def test_priority_and_a_pool_chat_template(start_daemon):
    """OC-OAI-9003, OC-OAI-9004"""
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant]"
    api = await start_daemon(
        mock_pool(), mock_pool("tpl", chat_template=template), abandon_grace_s=0
    )
    client, _ = clients(api)
    raw = await client.chat.completions.with_raw_response.create(
        model="tpl-model", messages=CONVERSATION, max_tokens=3, seed=4,
        extra_headers={"X-Priority": "batch", "X-Tenant-Id": "team-a"},
    )  # fmt: skip
    rendered = "[system] be brief\n[user] hello\n[assistant]"  # the pool's template, not the mock's
    assert raw.parse().choices[0].message.content == "".join(token_stream(4, rendered, 3))
    assert (await api.status(raw.headers["X-Task-Id"]))["priority"] == "batch"
    _, models = await api.get("/v1/models")
    assert {m["id"]: m["chat_template"] for m in models["data"]} == {
        "mock-model": "engine", "tpl-model": "config",
    }  # fmt: skip
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="mock-model", messages=CONVERSATION, extra_headers={"X-Priority": "urgent"}
        )
    assert err.value.param == "X-Priority"
    with pytest.raises(openai.BadRequestError) as err:  # the header and the field disagree
        await client.chat.completions.create(
            model="mock-model", messages=CONVERSATION, extra_headers={"X-Priority": "batch"},
            extra_body={"priority": "interactive"},
        )  # fmt: skip
    assert err.value.param == "X-Priority" and "disagree" in err.value.message
    raw = await client.chat.completions.with_raw_response.create(  # agreeing is fine
        model="mock-model", messages=CONVERSATION, max_tokens=1,
        extra_headers={"X-Priority": "batch"}, extra_body={"priority": "batch"},
    )  # fmt: skip
    assert (await api.status(raw.headers["X-Task-Id"]))["priority"] == "batch"


async def _sse(response) -> list[tuple[int | None, str]]:
    """(id, data) of each event, and ("comment", text) of comments, from a raw stream."""
    out, event_id = [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            out.append(("comment", line[1:].strip()))
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            out.append((event_id, line[6:]))
            event_id = None
    return out


async def test_a_queued_stream_answers_at_once_with_its_position(start_daemon):
    """OC-OAI-9005"""
    api = await start_daemon(
        mock_pool(replicas={"managed": {"count": 1, "slots": 1}}), stream_heartbeat_s=0.05
    )
    _, holder, _ = await api.submit(model="mock-model", prompt="[[stall:0]]")
    await api.wait_state(holder["task_id"], "running")
    body = {"model": "mock-model", "prompt": "queued", "max_tokens": 3, "stream": True}
    async with api.http.post(f"{api.base}/v1/completions", json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        first = await r.content.readline()  # sent before the task could start
        assert first == b": queued position=0\n"
        again = await r.content.readuntil(b": queued position=0\n")  # the heartbeat repeats it
        assert again.endswith(b"position=0\n")
        assert await api.cancel(holder["task_id"]) == 204
        events = await _sse(r)
    data = [d for i, d in events if i != "comment"]
    assert data[-1] == "[DONE]"
    text = "".join(
        json.loads(d)["choices"][0]["text"] for d in data[:-1] if json.loads(d)["choices"]
    )
    assert text == "".join(token_stream(0, "queued", 3))


async def test_a_stream_answers_at_once_before_its_engine_does(start_daemon):
    """OC-OAI-9005: a running task's stream sends its headers before any token (a text
    completion has no opening chunk to carry them), and so does a resume that has caught
    up. The heartbeat is an hour: only an answer at once lets this test go on."""
    api = await start_daemon(mock_pool(), stream_heartbeat_s=3600)
    url = f"{api.base}/v1/completions"
    body = {"model": "mock-model", "prompt": "[[stall:0]] silent", "max_tokens": 5, "stream": True}
    async with api.http.post(url, json=body) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
        assert (await api.status(r.headers["X-Task-Id"]))["state"] == "running"
    body["prompt"] = "[[stall:1]] one token"
    async with api.http.post(url, json=body) as r:
        task_id = r.headers["X-Task-Id"]
        head = await r.content.readuntil(b"\n\n")  # the one token; then the engine stalls
        last_id = int(head.split(b"\n")[0].removeprefix(b"id: "))
        resume = {"Last-Event-ID": str(last_id), "Accept": "text/event-stream; format=openai"}
        async with api.http.get(f"{api.base}/v1/tasks/{task_id}/stream", headers=resume) as again:
            assert again.status == 200 and again.headers["Content-Type"] == "text/event-stream"
            assert (await api.status(task_id))["state"] == "running"  # (not its end's news)


async def test_a_client_that_leaves_cancels_its_task_and_frees_the_slot(start_daemon):
    """OC-OAI-9006"""
    api = await start_daemon(
        mock_pool(replicas={"managed": {"count": 1, "slots": 1}}), abandon_grace_s=0
    )
    pool = api.daemon.service.pools["mock"]
    body = {"model": "mock-model", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "[[stall:2]] stay"}]}  # fmt: skip
    async with api.http.post(f"{api.base}/v1/chat/completions", json=body) as r:
        task_id = r.headers["X-Task-Id"]
        await r.content.readuntil(b'"content":" ')  # a token arrived; then the client leaves
    await pool.wait_idle()
    assert pool.manager.replicas[0].busy == 0
    status = await api.status(task_id)
    assert status["state"] == "canceled" and status["tokens_out"] == 2


async def test_a_client_that_leaves_a_non_streamed_request_cancels_its_task(start_daemon):
    """OC-OAI-9006: nothing is written to a non-streamed request's client before its end, so
    only the connection's close tells the daemon that it left."""
    api = await start_daemon(
        mock_pool(replicas={"managed": {"count": 1, "slots": 1}}), abandon_grace_s=0
    )
    svc, pool = api.daemon.service, api.daemon.service.pools["mock"]
    admitted: asyncio.Future = asyncio.get_running_loop().create_future()
    submit = svc.submit

    async def observed_submit(*args, **kw):  # the real admission; the test learns the task
        rec = await submit(*args, **kw)
        admitted.set_result(rec)
        return rec

    svc.submit = observed_submit
    body = json.dumps({"model": "mock-model", "max_tokens": 50,
                       "messages": [{"role": "user", "content": "[[stall:2]] stay"}]})  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", api.daemon.port)
    writer.write(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    task_id = (await admitted).task.id
    await api.wait_state(task_id, "running")
    writer.close()  # the client leaves, no answer read
    await pool.wait_idle()
    assert pool.manager.replicas[0].busy == 0
    assert (await api.status(task_id))["state"] == "canceled"
    assert await reader.read() == b""  # nothing was answered


async def test_resume_by_last_event_id_gives_the_missing_chunks_once(start_daemon):
    """OC-OAI-9007"""
    api = await start_daemon(mock_pool(), abandon_grace_s=600)
    body = {"model": "mock-model", "prompt": "resume", "max_tokens": 12, "seed": 3,
            "stream": True}  # fmt: skip
    async with api.http.post(f"{api.base}/v1/completions", json=body) as r:
        task_id = r.headers["X-Task-Id"]
        head = await r.content.readuntil(b"\n\n")  # the first chunk only
    first_id = int(head.split(b"\n")[0].removeprefix(b"id: "))
    await api.daemon.service.pools["mock"].wait_idle()  # it ran on without its client
    headers = {"Last-Event-ID": str(first_id), "Accept": "text/event-stream; format=openai"}
    async with api.http.get(f"{api.base}/v1/tasks/{task_id}/stream", headers=headers) as r:
        rest = await _sse(r)
    ids = [i for i, _ in rest if isinstance(i, int)]
    assert ids == sorted(set(ids)) and min(ids) > first_id  # nothing twice, nothing old
    data = next(line for line in head.split(b"\n") if line.startswith(b"data: "))
    chunks = [json.loads(data.removeprefix(b"data: "))] + [
        json.loads(d) for _, d in rest if d != "[DONE]"
    ]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == "".join(token_stream(3, "resume", 12))
    assert rest[-1][1] == "[DONE]" and {c["id"] for c in chunks} == {f"cmpl-{task_id}"}


async def test_one_request_native_streaming(start_daemon):
    """OC-OAI-9008"""
    api = await start_daemon(mock_pool())
    body = {"model": "mock-model", "prompt": "at once", "max_tokens": 4, "seed": 1}
    for how in ({"json": {**body, "stream": True}},
                {"json": body, "headers": {"Accept": "text/event-stream"}}):  # fmt: skip
        async with api.http.post(f"{api.base}/v1/tasks", **how) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            task_id = r.headers["X-Task-Id"]
            text = (await r.read()).decode()
        assert text.startswith("event: started\nid: 0\n")
        started = json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])
        assert started["task_id"] == task_id
        assert text.count("event: token") == 4 and "event: end" in text
    async with api.http.post(f"{api.base}/v1/tasks", json=body) as r:  # still two requests
        assert r.status == 202
