"""Leader election on PostgreSQL: a standby that names the leader, a paused leader that
wakes deposed and does nothing, and a database restart under the leader."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import psycopg

from test_harness.postgres import PostgresServer
from tests.ha.conftest import Node
from tests.helpers import engine_pool, orchctl

PROMPT = {"model": "mock-model", "max_tokens": 3}


async def submit(http: aiohttp.ClientSession, node: Node, prompt: str) -> str:
    async with http.post(f"{node.url}/v1/tasks", json={**PROMPT, "prompt": prompt}) as r:
        body = await r.json()
        assert r.status == 202, body
        return str(body["task_id"])


async def ending(http: aiohttp.ClientSession, node: Node, task_id: str) -> str:
    """The task's last SSE event name, read from `node` to its end."""
    last = ""
    async with http.get(f"{node.url}/v1/tasks/{task_id}/stream") as r:
        assert r.status == 200, await r.text()
        async for raw in r.content:
            line = raw.decode()
            if line.startswith("event: "):
                last = line.removeprefix("event: ").strip()
    return last


async def not_leader(http: aiohttp.ClientSession, node: Node) -> dict:
    async with http.post(f"{node.url}/v1/tasks", json={**PROMPT, "prompt": "x"}) as r:
        body = await r.json()
        assert r.status == 503 and body["code"] == "NOT_LEADER", body
        assert r.headers.get("X-Orchestratord-Leader") == body.get("leader_url")
        assert r.headers["Retry-After"]
        return body


def rows(url: str) -> tuple[list[tuple], list[tuple]]:
    """Every task row and output chunk in the database, in a stable order."""
    with psycopg.connect(url) as db:
        tasks = db.execute(
            "SELECT id, state, result, streamed, started FROM tasks ORDER BY id"
        ).fetchall()
        output = db.execute("SELECT task_id, chunk, tokens FROM task_output ORDER BY 1, 2")
        return tasks, output.fetchall()


async def test_a_standby_is_not_ready_and_names_the_leader(nodes, ledger_engine):
    """OC-HA-1701, OC-HA-1702, OC-HA-1707"""
    a, b, http = nodes
    await a.start(engine_pool(ledger_engine))
    await a.said('"event":"leading"')
    await b.start(engine_pool(ledger_engine))
    await b.said('"event":"standing by"')
    async with http.get(f"{b.url}/readyz") as r:
        assert r.status == 503
        assert await r.json() == {"ready": False, "role": "standby", "leader_url": a.url}
    async with http.get(f"{b.url}/healthz") as r:
        assert r.status == 200
    assert (await not_leader(http, b))["leader_url"] == a.url
    # the OpenAI door answers in OpenAI's shape, and names the leader in the header
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{b.url}/v1/chat/completions", json=body) as r:
        assert r.status == 503 and r.headers["X-Orchestratord-Leader"] == a.url
        assert (await r.json())["error"]["code"] == "NOT_LEADER"
    async with http.get(f"{a.url}/readyz") as r:
        assert r.status == 200
    for node, leading in ((a, "1.0"), (b, "0.0")):  # operators scrape both
        async with http.get(f"{node.url}/metrics") as r:
            assert r.status == 200 and f"\nleader {leading}\n" in await r.text()
    # orchctl given both follows the standby to the leader; given the standby alone, says
    # where the leader is
    code, out, err = await orchctl(f"{b.url},{a.url}", "pools")
    assert code == 0 and "remote" in out, err
    code, out, err = await orchctl(b.url, "pools")
    assert code != 0 and "NOT_LEADER" in err and a.url in err, (code, err)


async def test_a_paused_leader_wakes_deposed_and_neither_dispatches_nor_writes(
    nodes, ledger_engine
):
    """OC-HA-1703, OC-HA-1704"""
    a, b, http = nodes
    pool = engine_pool(ledger_engine, slots=2)
    await a.start(pool)
    await a.said('"event":"leading"')
    await b.start(pool)
    await b.said('"event":"standing by"')
    async with http.post(f"{ledger_engine}/_test/hold"):
        pass
    ids = [await submit(http, a, f"p{i}") for i in range(6)]  # p0, p1 run; p2..p5 queue
    async with http.get(f"{ledger_engine}/_test/ledger", params={"parked": 2}):
        pass

    a.signal(signal.SIGSTOP)  # frozen past its lease: its sockets, engine streams, all held
    await b.said('"event":"leading"')
    async with http.post(f"{ledger_engine}/_test/release"):
        pass
    assert [await ending(http, b, tid) for tid in ids] == ["end"] * 6
    before = rows(a.store["url"])

    a.signal(signal.SIGCONT)  # wakes with two answers waiting and four tasks queued
    await a.said('"event":"stepping down"')
    await a.said('"event":"standing by"')
    assert (await not_leader(http, a))["leader_url"] == b.url
    assert rows(a.store["url"]) == before  # nothing it tried to journal got in
    async with http.get(f"{ledger_engine}/_test/ledger") as r:
        received = (await r.json())["received"]
    # it dispatched nothing: each queued task reached the engine once, from the new leader
    assert [received.get(f"p{i}") for i in range(2, 6)] == [1, 1, 1, 1]


async def test_a_database_restart_under_the_leader_loses_no_task(tmp_path, ledger_engine):
    """OC-HA-1705"""
    pg = await asyncio.to_thread(PostgresServer().start)
    node = Node("a", tmp_path, pg.database("restart"), tmp_path / "state")
    try:
        async with aiohttp.ClientSession() as http:
            await node.start(engine_pool(ledger_engine, slots=2))
            await node.said('"event":"leading"')
            async with http.post(f"{ledger_engine}/_test/hold"):
                pass
            ids = [await submit(http, node, f"r{i}") for i in range(5)]  # 2 run, 3 queue
            async with http.get(f"{ledger_engine}/_test/ledger", params={"parked": 2}):
                pass
            await asyncio.to_thread(pg.stop, "fast")
            await node.said('"event":"stepping down"')
            await asyncio.to_thread(pg.start)
            await node.said('"event":"leading"', times=2)
            async with http.post(f"{ledger_engine}/_test/release"):
                pass
            assert [await ending(http, node, tid) for tid in ids] == ["end"] * 5
            async with http.get(f"{ledger_engine}/_test/ledger", params={"at_least": 5}) as r:
                completed = (await r.json())["completed"]
            assert {p: completed.get(p) for p in (f"r{i}" for i in range(5))} == {
                f"r{i}": 1 for i in range(5)
            }
    finally:
        await node.kill()
        await asyncio.to_thread(pg.close)


async def test_a_leader_stopped_cleanly_hands_over_at_once(nodes, ledger_engine):
    """OC-HA-1706"""
    a, b, http = nodes
    for node in (a, b):  # a lease that outlasts the test: only a handover can move it
        node.store["lease_s"] = 300
    await a.start(engine_pool(ledger_engine))
    await a.said('"event":"leading"')
    await b.start(engine_pool(ledger_engine))
    await b.said('"event":"standing by"')
    task_id = await submit(http, a, "before the handover")
    assert await ending(http, a, task_id) == "end"
    a.signal(signal.SIGTERM)
    assert a.proc is not None and await a.proc.wait() == 0
    await b.said('"event":"leading"')
    async with http.get(f"{b.url}/v1/tasks/{task_id}") as r:
        assert (await r.json())["state"] == "completed"
