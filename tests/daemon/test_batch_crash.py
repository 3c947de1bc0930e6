"""A 1,000-item batch survives two SIGKILLs of the daemon: every `custom_id` is answered
exactly once, and the engine's own ledger shows no request completed twice.

The engine is the project's mock OpenAI server in a process of its own (it outlives the
daemon), keeping a ledger of the requests it completed. Before each kill it parks every
stream in flight — every request the daemon has sent, none left in transit — and the test
waits until the daemon has journaled each completion the engine made. An item completed at
the engine in the instant before the daemon journaled it would run again: at-least-once is
what a crash allows. With the engine parked the kill lands outside that instant, so any
item answered twice here is the daemon's fault.
"""

from __future__ import annotations

import asyncio
import json

from tests.helpers import (
    Served,
    create_item_batch,
    engine_pool,
    park_engine,
    start_ledger_engine,
)

ITEMS = 1000
FINAL = {"completed", "failed", "expired", "cancelled"}


async def test_a_batch_killed_twice_answers_each_item_once(served: Served, store_backend: str):
    """OC-BATCH-1105"""
    engine, engine_url = await start_ledger_engine()
    http = served.http
    try:
        await served.start(engine_pool(engine_url, slots=16))
        batch_id = await create_item_batch(http, served.url, ITEMS)

        for at_least in (300, 600):  # kill it twice, mid-run
            async with http.get(f"{engine_url}/_test/ledger", params={"at_least": at_least}):
                pass
            engine_done = await park_engine(http, engine_url, served.url)
            await _journaled(served, batch_id, engine_done)
            await served.kill()
            async with http.post(f"{engine_url}/_test/release"):
                pass
            await served.start(engine_pool(engine_url, slots=16))

        async with http.get(f"{engine_url}/_test/ledger", params={"at_least": ITEMS}) as r:
            ledger = await r.json()
        batch = await _journaled(served, batch_id, ITEMS)
        assert batch["status"] == "completed", batch
        assert batch["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
        assert ledger["total"] == ITEMS and set(ledger["completed"].values()) == {1}
        async with http.get(f"{served.url}/v1/files/{batch['output_file_id']}/content") as r:
            output = [json.loads(line) for line in (await r.text()).splitlines()]
        assert [o["custom_id"] for o in output] == [f"item-{i}" for i in range(ITEMS)]
    finally:
        engine.kill()
        await engine.wait()


async def _journaled(served: Served, batch_id: str, completed: int) -> dict:
    """The batch once the daemon counts `completed` items (it counts an item once its end
    is durable), and — for the last — once it reached a final status. Each read is a real
    request; the daemon needs a few milliseconds to catch up with the engine."""
    async with asyncio.timeout(60):
        while True:
            async with served.http.get(f"{served.url}/v1/batches/{batch_id}") as r:
                batch = await r.json()
            counts = batch["request_counts"]
            enough = counts["completed"] + counts["failed"] >= completed
            if enough and (completed < ITEMS or batch["status"] in FINAL):
                return batch
