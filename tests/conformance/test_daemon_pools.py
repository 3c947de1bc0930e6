"""A pool of each attached engine serves jobs through the daemon end to end, native and
OpenAI chat (the engine's own chat route, or the pool's template where it has none)."""

from __future__ import annotations

import openai
import pytest

from tests.helpers import wait_ready

TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


@pytest.mark.parametrize("engine", ["tgi", "triton", "openai", "llamacpp"])
async def test_attached_pool_serves_jobs_end_to_end(engine, request, start_daemon):
    """OC-ADAPT-3007"""
    fixture = {"tgi": "tgi_server", "triton": "triton_server"}.get(engine, "llama_server")
    server = request.getfixturevalue(fixture)
    await server.wait_idle()  # nothing an earlier test started still holds a slot
    endpoint = f"grpc://{server.url}" if engine == "triton" else server.url
    pool = {
        "id": engine,
        "engine": engine,
        "model": f"{engine}-model",
        "engine_model": "tiny_llm" if engine == "triton" else None,
        "replicas": {"endpoints": [endpoint]},
        "slots_per_endpoint": 2,
    }
    api = await start_daemon(pool, ready=False)
    await wait_ready(api)
    _, task, _ = await api.submit(
        model=f"{engine}-model", prompt="end to end", max_tokens=6, seed=11
    )
    events = await api.events(task["task_id"])
    assert events[0][0] == "started" and events[0][2]["engine"] == engine
    assert events[-1][0] == "end" and events[-1][2]["tokens_out"] == 6
    _, caps = await api.get("/v1/capabilities")
    assert caps["engines"][0]["engine"] == engine and caps["engines"][0]["engine_version"]
    _, info = await api.get(f"/v1/pools/{engine}")
    assert info["replicas"][0]["state"] == "ready" and info["replicas"][0]["slots_total"] >= 1


@pytest.mark.parametrize("engine", ["tgi", "triton", "openai", "llamacpp"])
async def test_attached_pool_serves_openai_chat(engine, request, start_daemon):
    """OC-OAI-9004, OC-ADAPT-3007"""
    fixture = {"tgi": "tgi_server", "triton": "triton_server"}.get(engine, "llama_server")
    server = request.getfixturevalue(fixture)
    await server.wait_idle()
    endpoint = f"grpc://{server.url}" if engine == "triton" else server.url
    pool = {
        "id": engine, "engine": engine, "model": "m", "replicas": {"endpoints": [endpoint]},
        "engine_model": "tiny_llm" if engine == "triton" else None, "slots_per_endpoint": 2,
    }  # fmt: skip
    # triton has no chat route: only a pool with a template can take a conversation
    api = await start_daemon(pool, {**pool, "id": "tpl", "model": "t", "chat_template": TEMPLATE})
    client = openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key="-", max_retries=0)
    messages = [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}]
    for model in ("m", "t"):
        if engine == "triton" and model == "m":
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model=model, messages=messages)
            assert err.value.code == "INVALID_PARAMS" and err.value.param == "messages"
            continue
        stream = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=5, seed=3, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text and chunks[-1].usage.completion_tokens == 5
