"""Failover under load: the leader is SIGKILLed with tasks queued and running, tokens
streamed, a batch half done and SDK clients mid-stream; the standby takes over from the
shared database. Every accepted task ends exactly once, no batch item reaches the engine's
ledger twice, and the clients — the SDK given both URLs — finish their work.

Daemon a's mock pool stalls after two tokens (work in flight at the kill); b's, the same
pool, does not. The batch runs on an engine outside both daemons, parked before the kill as
in the Batch API's crash test (tests/daemon/test_batch_crash.py), so an item completed twice
would be the daemons' fault, not the crash's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from orchestratord.client.sdk import Event, OrchClient
from tests.engines.conftest import LONG_STREAMS, llama_pool
from tests.ha.conftest import Node
from tests.helpers import create_item_batch, engine_pool, mock_pool, park_engine

ITEMS = 300


def pools(engine_url: str, model: Any, stall: int | None) -> list[dict[str, Any]]:
    streamed = mock_pool(
        "streamed", mock={"stall_after_tokens": stall}, replicas={"managed": {"slots": 4}}
    )
    # the slow model (~150 tokens/s): an SDK stream is likely in flight at the kill
    llama = llama_pool(model, **LONG_STREAMS)
    return [engine_pool(engine_url, slots=8), streamed, llama]


async def journaled(http: aiohttp.ClientSession, node: Node, batch_id: str, done: int) -> dict:
    """The batch once `node` counts `done` items as ended (durably) — and, for all of them,
    once it is final."""
    async with asyncio.timeout(120):
        while True:
            async with http.get(f"{node.url}/v1/batches/{batch_id}") as r:
                batch = await r.json()
            counts = batch["request_counts"]
            if counts["completed"] + counts["failed"] >= done and (
                done < ITEMS or batch["status"] == "completed"
            ):
                return batch


async def streamed_tokens(http: aiohttp.ClientSession, node: Node, task_id: str, n: int) -> None:
    seen = 0
    async with http.get(f"{node.url}/v1/tasks/{task_id}/stream") as r:
        async for raw in r.content:
            seen += raw.startswith(b"event: token")
            if seen == n:
                return


async def sdk_worker(
    urls: list[str], n: int, warm: asyncio.Semaphore, killed: asyncio.Event
) -> list[tuple[str, list]]:
    """Submit and stream llama.cpp tasks one after another through the SDK's multi-URL
    mode — releasing `warm` after two — until two have finished after the kill: (task id,
    its terminal events) each."""
    results: list[tuple[str, list[Event]]] = []
    after_kill = 0
    async with OrchClient(urls, failover_s=120) as client:
        while after_kill < 2:
            if len(results) == 2:
                warm.release()
            assert len(results) < 500, "the kill never came"
            body = {"model": "llama-model", "prompt": f"worker {n} task {len(results)}",
                    "max_tokens": 24}  # fmt: skip
            admitted = await client.submit(body)
            ends = [e async for e in client.stream(admitted.task_id) if e.event in ("end", "error")]
            results.append((admitted.task_id, ends))
            after_kill += killed.is_set()
        assert client.base_url == urls[1]  # it followed the new leader
    return results


async def test_a_killed_leader_under_load_loses_nothing_and_repeats_nothing(
    nodes, ledger_engine, slow_model
):
    """OC-HA-1703, OC-HA-1706, OC-HA-1707, OC-HA-1708"""
    a, b, http = nodes
    await a.start(*pools(ledger_engine, slow_model, stall=2))
    await a.said('"event":"leading"')
    await b.start(*pools(ledger_engine, slow_model, stall=None))
    await b.said('"event":"standing by"')

    batch_id = await create_item_batch(http, a.url, ITEMS)
    streamed = []
    for i in range(3):  # two tokens each, then stalled: started work at the kill
        async with http.post(f"{a.url}/v1/tasks", json={"model": "streamed-model",
                             "prompt": f"s{i}", "max_tokens": 5}) as r:  # fmt: skip
            streamed.append((await r.json())["task_id"])
    for tid in streamed:
        await streamed_tokens(http, a, tid, 2)
    killed, warm = asyncio.Event(), asyncio.Semaphore(0)
    workers = [asyncio.create_task(sdk_worker([a.url, b.url], n, warm, killed)) for n in range(3)]
    for _ in workers:  # each has run tasks on a before the kill
        await warm.acquire()
    # and an SDK client reads a stalled stream across the kill
    follower = OrchClient([a.url, b.url], failover_s=120)
    following = asyncio.create_task(_events(follower, streamed[0]))

    async with http.get(f"{ledger_engine}/_test/ledger", params={"at_least": 100}):
        pass
    engine_done = await park_engine(http, ledger_engine, a.url)
    await journaled(http, a, batch_id, engine_done)
    await a.kill()
    killed.set()
    async with http.post(f"{ledger_engine}/_test/release"):
        pass
    await b.said('"event":"leading"')

    async with asyncio.timeout(180):
        finished = [r for w in await asyncio.gather(*workers) for r in w]
    for task_id, ends in finished:  # one ending each, and the leader's record agrees
        assert len(ends) == 1, (task_id, ends)
        async with http.get(f"{b.url}/v1/tasks/{task_id}") as r:
            status = await r.json()
        if ends[0].event == "end":
            assert status["state"] == "completed", status
        else:
            assert ends[0].data["code"] == "DAEMON_RESTART", ends
            assert status["error"]["code"] == "DAEMON_RESTART", status
    events = await following
    await follower.aclose()
    assert [e.event for e in events] == ["started", "token", "token", "error"], events
    assert events[-1].data["code"] == "DAEMON_RESTART" and follower.base_url == b.url
    for tid in streamed:
        async with http.get(f"{b.url}/v1/tasks/{tid}") as r:
            status = await r.json()
        assert (status["state"], status["error"]["code"]) == ("failed", "DAEMON_RESTART")

    batch = await journaled(http, b, batch_id, ITEMS)
    assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    async with http.get(f"{ledger_engine}/_test/ledger", params={"at_least": ITEMS}) as r:
        completed = (await r.json())["completed"]
    items = {p: n for p, n in completed.items() if p.startswith("item ")}
    assert len(items) == ITEMS and set(items.values()) == {1}
    # b received neither the input nor the output on its own disk: both came from the store
    async with http.get(f"{b.url}/v1/files/{batch['output_file_id']}/content") as r:
        output = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [o["custom_id"] for o in output] == [f"item-{i}" for i in range(ITEMS)]


async def _events(client: OrchClient, task_id: str) -> list[Event]:
    return [e async for e in client.stream(task_id)]
