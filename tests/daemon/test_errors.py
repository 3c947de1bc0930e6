"""Bad input gets a clear typed error; no traceback ever reaches a client."""

from __future__ import annotations

import pytest

from tests.helpers import mock_pool


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"model": "mock-model", "prompt": "x", "max_tokens": "5"}, "max_tokens", "integer"),
        ({"model": "mock-model", "prompt": 5}, "prompt", "string"),
        ({"model": "mock-model", "prompt": "x", "bogus": 1}, "bogus", "not permitted"),
        ({"prompt": "x"}, "model", "required"),
        ({"model": "mock-model", "prompt": "x", "priority": "urgent"}, "priority", "interactive"),
        (
            {"model": "mock-model", "prompt": "x", "sampling": {"temperature": -1}},
            "sampling.temperature",
            "greater than",
        ),
        ({"model": "mock-model", "prompt": "x", "max_tokens": 0}, "max_tokens", "greater"),
    ],
)
async def test_invalid_requests_get_400_naming_the_field(start_daemon, body, field, fragment):
    """OC-CTRL-2012"""
    api = await start_daemon(mock_pool())
    async with api.http.post(f"{api.base}/v1/tasks", json=body) as r:
        assert r.status == 400
        err = await r.json()
    assert err["code"] == "INVALID_PARAMS" and err["retriable"] is False
    assert err["field"] == field and fragment in err["message"]


async def test_malformed_json_and_oversized_body(start_daemon):
    """OC-CTRL-2012"""
    api = await start_daemon(mock_pool(), max_body_bytes=2048)
    json_body = {"Content-Type": "application/json"}
    async with api.http.post(f"{api.base}/v1/tasks", data=b'{"model": ', headers=json_body) as r:
        assert r.status == 400
        err = await r.json()
        assert err["code"] == "INVALID_PARAMS" and "malformed JSON" in err["message"]
    big = {"model": "mock-model", "prompt": "x" * 4096}
    async with api.http.post(f"{api.base}/v1/tasks", json=big) as r:
        assert r.status == 413
        err = await r.json()
        assert err["code"] == "INVALID_PARAMS" and "2048" in err["message"]
        assert r.headers["X-Correlation-Id"]


async def test_admission_errors_use_the_taxonomy(start_daemon):
    """OC-CTRL-2012"""
    api = await start_daemon(mock_pool(mock={"ctx_per_slot": 64}))
    _, err, _ = await api.submit(expect=404, model="nope", prompt="x")
    assert err["code"] == "UNKNOWN_MODEL"
    _, err, _ = await api.submit(expect=400, model="mock-model", prompt="x", max_tokens=100)
    assert err["code"] == "INVALID_PARAMS" and "64" in err["message"]
    assert err["field"] == "max_tokens"
    _, err, _ = await api.submit(
        expect=400, model="mock-model", prompt="x", placement={"mode": "pin"}
    )
    assert "replica_id" in err["message"]
    _, err, _ = await api.submit(
        expect=400,
        model="mock-model",
        prompt="x",
        max_tokens=5,
        placement={"mode": "pin", "replica_id": "ghost"},
    )
    assert err["field"] == "placement.replica_id"
    assert (await api.get("/v1/tasks/unknown"))[1]["code"] == "NOT_FOUND"


async def test_unexpected_failure_is_an_envelope_not_a_traceback(start_daemon, monkeypatch):
    """OC-CTRL-2014"""
    api = await start_daemon(mock_pool())

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(api.daemon.service, "task", broken)
    async with api.http.get(f"{api.base}/v1/tasks/x") as r:
        assert r.status == 500
        text = await r.text()
    assert "INTERNAL" in text and "Traceback" not in text and "secret" not in text


async def test_unknown_route_and_method_are_enveloped(start_daemon):
    """OC-CTRL-2012, OC-OAI-9009"""
    api = await start_daemon(mock_pool())
    status, body = await api.get("/v1/tasks/some-task/nowhere")
    assert status == 404 and body["code"] == "NOT_FOUND"
    status, body = await api.get("/v1/nowhere")  # not a native resource: OpenAI's API
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    async with api.http.put(f"{api.base}/v1/tasks") as r:
        body = await r.json()
        assert r.status == 405 and body["code"] == "INVALID_PARAMS"
        assert body["message"].startswith("PUT is not allowed on /v1/tasks; allowed: ")
    async with api.http.get(f"{api.base}/v1/chat/completions") as r:  # OpenAI's 4xx type
        error = (await r.json())["error"]
        assert r.status == 405 and error["type"] == "invalid_request_error"
        assert error["message"] == "GET is not allowed on /v1/chat/completions; allowed: POST"
