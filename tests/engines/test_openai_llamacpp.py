"""The OpenAI door over a real llama.cpp pool: the official SDK in, llama-server out."""

from __future__ import annotations

import asyncio

import openai
import pytest

from pool_managerd.probe import poll_until
from tests.engines.conftest import LONG_STREAMS, llama_pool

pytestmark = pytest.mark.llamacpp


async def test_openai_sdk_over_real_llama_cpp(start_daemon, tiny_model):
    """OC-OAI-9001, OC-OAI-9004"""
    api = await start_daemon(llama_pool(tiny_model))
    client = openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key="-", max_retries=0)
    messages = [{"role": "user", "content": "say something"}]
    chat = await client.chat.completions.create(
        model="llama-model", messages=messages, max_tokens=6, seed=5
    )  # rendered by llama-server's own chat template
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 6
    assert chat.choices[0].message.content
    again = await client.chat.completions.create(
        model="llama-model", messages=messages, max_tokens=6, seed=5, stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in again if c.choices])
    assert streamed == chat.choices[0].message.content  # same seed, same text, either way
    text = await client.completions.create(
        model="llama-model", prompt="once upon", max_tokens=4, seed=1
    )
    assert text.usage.completion_tokens == 4 and text.choices[0].text


async def test_leaving_mid_stream_frees_the_llama_slot(start_daemon, slow_model):
    """OC-OAI-9006"""
    api = await start_daemon(
        llama_pool(slow_model, replicas={"managed": {"slots": 1, "ctx": 2048}}, **LONG_STREAMS),
        abandon_grace_s=0,
    )
    replica = api.daemon.service.pools["llama"].manager.replicas[0]
    client = openai.AsyncOpenAI(base_url=f"{api.base}/v1", api_key="-", max_retries=0)
    stream = await client.chat.completions.create(
        model="llama-model", messages=[{"role": "user", "content": "go on"}],
        max_tokens=1500, stream=True,
    )  # fmt: skip
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break  # the engine is generating for us
    assert await replica.adapter.busy_slots() == 1
    await stream.close()  # the client goes away
    async with asyncio.timeout(10):  # the engine's own view: its slot is free again
        await poll_until(lambda: _idle(replica.adapter))
    await api.daemon.service.pools["llama"].wait_idle()
    assert replica.busy == 0


async def _idle(adapter) -> bool:
    return await adapter.busy_slots() == 0
