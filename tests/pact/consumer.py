"""The consumer side, recorded against pact's real mock server: what the Python client /
orchctl expects of orchestratord (contracts/pacts/orchctl-orchestratord.json), and what the
official OpenAI SDK expects of its door (openai-sdk-orchestratord.json). `make pact` writes
both; the provider test verifies every pact against a live daemon."""

from __future__ import annotations

from pathlib import Path

import openai
from pact import Pact, match

from orchestratord.api.provider_states import FINISHED_TASK, RUNNING_TASK
from orchestratord.client import Backpressure, ClientError, OrchClient

UUID = "8c3b5c0e-6d4e-4f7a-9a8b-1c2d3e4f5a6b"
ENVELOPE = {
    "code": match.str("INVALID_PARAMS"),
    "message": match.str("explains"),
    "retriable": match.bool(False),
}
# JSON data lines never contain a newline, so no dot-all flag is needed (pact's regex
# engine, Oniguruma, does not take Python's `(?s)`).
SSE = (
    r"^event: started\nid: 0\ndata: \{[^\n]*\}\nretry: \d+\n\n(event: token\nid: \d+\ndata: "
    r"\{\"i\":\d+,\"t\":[^\n]*\}\n\n)*event: end\nid: \d+\ndata: "
    r"\{[^\n]*\"finish_reason\"[^\n]*\}\n\n$"
)
SSE_EXAMPLE = (
    'event: started\nid: 0\ndata: {"task_id":"00000000-0000-4000-8000-000000000002",'
    '"queue_position":0,"predicted_start_ms":0,'
    '"pool_id":"tiny","replica_id":"tiny-r0","engine":"mock","engine_version":'
    '"mock-1","seed":null}\nretry: 1000\n\nevent: token\nid: 1\ndata: {"i":0,"t":"the"}\n\n'
    'event: end\nid: 2\ndata: {"tokens_out":1,"decode_ms":0,"finish_reason":'
    '"length"}\n\n'
)


def build() -> Pact:
    pact = Pact("orchctl", "orchestratord").with_specification("V4")
    (
        pact.upon_receiving("a task submission")
        .with_request("POST", "/v1/tasks")
        .with_body({"model": "tiny-llama", "prompt": "hello", "max_tokens": 4}, "application/json")
        .will_respond_with(202)
        .with_body(
            {
                "task_id": match.uuid(UUID),
                "queue_position": match.int(0),
                "predicted_start_ms": match.int(0),
                "stream_url": match.regex(
                    f"/v1/tasks/{UUID}/stream", regex=r"^/v1/tasks/[0-9a-f-]+/stream$"
                ),
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("an invalid submission")
        .with_request("POST", "/v1/tasks")
        .with_body(
            {"model": "tiny-llama", "prompt": "hello", "max_tokens": "many"}, "application/json"
        )
        .will_respond_with(400)
        .with_body({**ENVELOPE, "field": "max_tokens"}, "application/json")
    )
    (
        pact.upon_receiving("a submission for an unknown model")
        .with_request("POST", "/v1/tasks")
        .with_body({"model": "no-such-model", "prompt": "hello"}, "application/json")
        .will_respond_with(404)
        .with_body({**ENVELOPE, "code": "UNKNOWN_MODEL"}, "application/json")
    )
    (
        pact.upon_receiving("a submission when the queue is full")
        .given("queue full")
        .with_request("POST", "/v1/tasks")
        .with_body({"model": "tiny-llama", "prompt": "one more"}, "application/json")
        .will_respond_with(429)
        .with_header("Retry-After", match.regex("1", regex=r"^[1-9][0-9]*$"))
        .with_header("X-Backoff-Ms", match.regex("1000", regex=r"^[0-9]+$"))
        .with_body(
            {
                "code": "ADMISSION_REJECT",
                "message": match.str("queue full"),
                "retriable": True,
                "retry_after_ms": match.int(1000),
                "policy_label": "reject",
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("the status of a running task")
        .given("task running")
        .with_request("GET", f"/v1/tasks/{RUNNING_TASK}")
        .will_respond_with(200)
        .with_body(
            {
                "task_id": RUNNING_TASK,
                "state": "running",
                "model": "tiny-llama",
                "pool_id": match.str("tiny"),
                "priority": "interactive",
                "tokens_out": match.int(1),
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("the status of a finished task")
        .given("task finished")
        .with_request("GET", f"/v1/tasks/{FINISHED_TASK}")
        .will_respond_with(200)
        .with_body(
            {
                "task_id": FINISHED_TASK,
                "state": "completed",
                "model": "tiny-llama",
                "pool_id": match.str("tiny"),
                "priority": "interactive",
                "finish_reason": "length",
                "tokens_out": match.int(4),
                "output": match.str("the queue admits"),
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("the list of live tasks")
        .given("task running")
        .with_request("GET", "/v1/tasks")
        .will_respond_with(200)
        .with_body(
            {
                "tasks": match.each_like(
                    {
                        "task_id": RUNNING_TASK,
                        "state": "running",
                        "model": "tiny-llama",
                        "pool_id": match.str("tiny"),
                        "priority": "interactive",
                        "tenant": match.str("default"),
                        "tokens_out": match.int(1),
                        "age_ms": match.int(5),
                    }
                ),
                "truncated": False,
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("a cancel of a running task")
        .given("task running")
        .with_request("POST", f"/v1/tasks/{RUNNING_TASK}/cancel")
        .will_respond_with(204)
    )
    (
        pact.upon_receiving("the stream of a finished task")
        .given("task finished")
        .with_request("GET", f"/v1/tasks/{FINISHED_TASK}/stream")
        .will_respond_with(200)
        .with_header("Content-Type", "text/event-stream")
        .with_body(SSE_EXAMPLE, "text/event-stream")
        .with_matching_rules(
            {"body": {"$": {"combine": "AND", "matchers": [{"match": "regex", "regex": SSE}]}}},
            "Response",
        )
    )
    (
        pact.upon_receiving("the pools list")
        .with_request("GET", "/v1/pools")
        .will_respond_with(200)
        .with_body(
            {
                "pools": match.each_like(
                    {
                        "pool_id": match.str("tiny"),
                        "engine": match.str("mock"),
                        "model": match.str("tiny-llama"),
                        "ready": match.bool(True),
                        "draining": match.bool(False),
                        "queue_depth": {"interactive": match.int(0), "batch": match.int(0)},
                        "queue_capacity": match.int(1),
                        "policy": match.regex("reject", regex="^(reject|drop-lru)$"),
                        "ctx_max": match.int(4096),
                        "replicas": match.each_like(
                            {
                                "replica_id": match.str("tiny-r0"),
                                "state": match.str("ready"),
                                "slots_total": match.int(1),
                                "slots_free": match.int(1),
                                "engine": match.str("mock"),
                                "engine_version": match.str("mock-1"),
                                "model_digest": match.str("sha256:0"),
                                "deterministic": match.bool(False),
                            }
                        ),
                    }
                )
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("a drain of a pool")
        .with_request("POST", "/v1/pools/spare/drain")
        .with_body({"deadline_ms": 1000}, "application/json")
        .will_respond_with(202)
        .with_body({"pool_id": "spare", "status": "draining"}, "application/json")
    )
    return pact


async def exercise(url: str) -> None:
    """Drive the real client through every interaction."""
    async with OrchClient(url) as client:
        admitted = await client.submit({"model": "tiny-llama", "prompt": "hello", "max_tokens": 4})
        assert admitted.stream_url.endswith("/stream")
        for body, status in (
            ({"model": "tiny-llama", "prompt": "hello", "max_tokens": "many"}, 400),
            ({"model": "no-such-model", "prompt": "hello"}, 404),
        ):
            try:
                await client.submit(body)
                raise AssertionError("expected an error")
            except ClientError as e:
                assert e.status == status
        try:
            await client.submit({"model": "tiny-llama", "prompt": "one more"})
            raise AssertionError("expected backpressure")
        except Backpressure as e:
            assert e.status == 429 and e.retry_after_s >= 1
        assert (await client.status(RUNNING_TASK)).state == "running"
        assert [t.task_id for t in (await client.tasks()).tasks] == [RUNNING_TASK]
        assert (await client.status(FINISHED_TASK)).output
        await client.cancel(RUNNING_TASK)
        events = [e.event async for e in client.stream(FINISHED_TASK)]
        assert events[0] == "started" and events[-1] == "end"
        assert (await client.pools())[0].pool_id
        await client.drain("spare", 1000)


CHAT = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def build_openai() -> Pact:
    pact = Pact("openai-sdk", "orchestratord").with_specification("V4")
    (
        pact.upon_receiving("an OpenAI chat completion")
        .with_request("POST", "/v1/chat/completions")
        .with_body(CHAT, "application/json")
        .will_respond_with(200)
        .with_header("X-Task-Id", match.uuid(UUID))
        .with_body(
            {
                "id": match.regex(f"chatcmpl-{UUID}", regex=r"^chatcmpl-[0-9a-f-]+$"),
                "object": "chat.completion",
                "created": match.int(1767225600),
                "model": "tiny-llama",
                "choices": match.each_like(
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": match.str("the queue")},
                        "finish_reason": match.regex("length", regex="^(stop|length)$"),
                    }
                ),
                "usage": {
                    "prompt_tokens": match.int(3),
                    "completion_tokens": match.int(4),
                    "total_tokens": match.int(7),
                },
            },
            "application/json",
        )
    )
    (
        pact.upon_receiving("an OpenAI chat completion for an unknown model")
        .with_request("POST", "/v1/chat/completions")
        .with_body({**CHAT, "model": "no-such-model"}, "application/json")
        .will_respond_with(404)
        .with_body(
            {
                "error": {
                    "message": match.str("explains"),
                    "type": "not_found_error",
                    "code": "UNKNOWN_MODEL",
                    "param": "model",
                }
            },
            "application/json",
        )
    )
    return pact


async def exercise_openai(url: str) -> None:
    """Drive the official OpenAI SDK through its interactions."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(**CHAT)
    chat = raw.parse()
    assert chat.choices[0].message.content and raw.headers["X-Task-Id"]
    try:
        await client.chat.completions.create(**{**CHAT, "model": "no-such-model"})
        raise AssertionError("expected an error")
    except openai.NotFoundError as e:
        assert e.code == "UNKNOWN_MODEL"


def write(directory: Path) -> list[Path]:
    """Record every consumer's pact into `directory`."""
    import asyncio

    written = []
    for pact, exercise_it, name in (
        (build(), exercise, "orchctl-orchestratord.json"),
        (build_openai(), exercise_openai, "openai-sdk-orchestratord.json"),
    ):
        with pact.serve(addr="127.0.0.1") as server:
            asyncio.run(exercise_it(str(server.url).rstrip("/")))
        pact.write_file(directory, overwrite=True)
        written.append(directory / name)
    return written


if __name__ == "__main__":
    for path in write(Path(__file__).resolve().parents[2] / "contracts" / "pacts"):
        print(path)
