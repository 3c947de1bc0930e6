"""A token reaches its client on its own, as the engine sends it: the engine here is the
project's OpenAI-compatible mock server, in this test's loop, holding each token until the
test has read the one before it from the daemon. So every token after the first is sent to
a reader that has caught up — the one a follower writes from the engine's read callback —
and the test sees each on the wire, framed, before the next exists. Beside it, the follower
on its own, writing to a transport that records its writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from orchestratord.api.sse import NativeEvents
from orchestratord.api.streaming import _Follower
from orchestratord.api_models import EndEvent
from orchestratord.service.streams import TOKEN, TaskStream
from test_harness.engines.mock_http import LEDGER, Ledger, make_app
from tests.helpers import engine_pool, sse_events

TOKENS = 6


@pytest.fixture
async def held_engine() -> AsyncIterator[tuple[str, Ledger]]:
    """The mock engine with its ledger: streams park before each event while its gate is
    shut."""
    app = make_app(ledger=True)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    ledger = app[LEDGER]
    assert ledger is not None
    yield f"http://127.0.0.1:{port}", ledger
    ledger.gate.set()  # (a failed test leaves a stream parked)
    await runner.cleanup()


def _token(door: str, event: dict[str, str]) -> str | None:
    """A token event's text, in the door's format; None for any other event."""
    if door == "native":
        return str(orjson.loads(event["data"])["t"]) if event.get("event") == "token" else None
    if event["data"] == "[DONE]":
        return None
    choices = orjson.loads(event["data"]).get("choices") or [{}]
    return choices[0].get("delta", {}).get("content") or None


async def _next_token(door: str, events: AsyncIterator[dict[str, str]]) -> str:
    async for event in events:
        if (text := _token(door, event)) is not None:
            return text
    raise AssertionError("the stream ended before the token")


@pytest.mark.parametrize("door", ["openai", "native"])
async def test_each_token_reaches_the_client_before_the_engine_sends_the_next(
    start_daemon, held_engine, door
):
    """OC-CTRL-2031, OC-OAI-9008"""
    engine_url, ledger = held_engine
    api = await start_daemon(engine_pool(engine_url))
    ledger.gate.clear()
    if door == "openai":
        path = "/v1/chat/completions"
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    else:
        path, body = "/v1/tasks", {"prompt": "hi"}
    body |= {"model": "mock-model", "max_tokens": TOKENS, "seed": 7, "stream": True}
    texts: list[str] = []
    async with asyncio.timeout(30), api.http.post(api.base + path, json=body) as r:
        assert r.status == 200
        events = sse_events(r)
        for i in range(TOKENS):
            await ledger.wait(lambda: ledger.parked == 1)  # the engine holds its next token
            ledger.gate.set()
            if i < TOKENS - 1:
                ledger.gate.clear()  # that one token goes; the stream parks again after it
            # (the last goes with the end, often in the same read: the ending's write then
            # carries it)
            texts.append(await _next_token(door, events))
        rest = [event async for event in events]
    assert len(texts) == TOKENS and all(texts)
    assert not [event for event in rest if _token(door, event) is not None]
    last = rest[-1]
    assert last["data"] == "[DONE]" if door == "openai" else last["event"] == "end"
    status = await api.status(r.headers["X-Task-Id"])
    assert status["state"] == "completed" and status["output"] == "".join(texts)


class RecordingTransport:
    """A client connection that takes every write at once, and keeps them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        raise AssertionError("a transport that takes every write is never aborted")


async def _one_loop_pass() -> None:
    """Return once what was scheduled before this call (`call_soon`) has run."""
    loop = asyncio.get_running_loop()
    passed = loop.create_future()
    loop.call_soon(passed.set_result, None)
    await passed


async def test_a_followers_tokens_are_written_per_read_and_the_last_go_with_the_ending():
    """OC-CTRL-2031: what a follower takes in one loop pass is one chunk written at the
    end of that pass; tokens from the read that also ended the task are left to the
    reader's task, which writes them with the ending (one write for both)."""
    transport, stream, render = (
        RecordingTransport(),
        TaskStream(max_events=16, max_text=1 << 20),
        NativeEvents(),
    )
    follower = _Follower(transport, True, render, stream)
    follower.ready = True
    a, b, c = ((TOKEN, i + 1, i, text, ()) for i, text in enumerate("abc"))
    assert follower([a]) and follower([b])  # two reads in one loop pass
    assert transport.writes == []
    await _one_loop_pass()
    frames = render([a]) + render([b])
    assert transport.writes == [b"%x\r\n%b\r\n" % (len(frames), frames)]
    assert follower([c])
    stream.end(EndEvent(tokens_out=3, decode_ms=0, finish_reason="stop"))  # the same read
    await _one_loop_pass()
    assert len(transport.writes) == 1  # nothing more: the reader's task writes `c`
    assert follower.take() == render([c])
    assert follower.writes == 1
