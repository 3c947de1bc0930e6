"""Agents follow the leader: an agent given every daemon's gRPC address joins whichever
leads (a standby opens no agents' port), and after a failover joins the new leader, whose
pool then runs on it — its engine kept running throughout."""

from __future__ import annotations

import aiohttp

from pool_managerd.launchers import free_port
from tests.agents.conftest import AgentProcess, agents_server, remote_pool
from tests.ha.conftest import Node

BODY = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


async def completes(http: aiohttp.ClientSession, node: Node) -> str:
    """Submit a task to `node` and read its stream to the end: its last event."""
    async with http.post(f"{node.url}/v1/tasks", json=BODY) as r:
        assert r.status == 202, await r.text()
        task_id = (await r.json())["task_id"]
    last = ""
    async with http.get(f"{node.url}/v1/tasks/{task_id}/stream") as r:
        async for raw in r.content:
            if raw.startswith(b"event: "):
                last = raw.decode().removeprefix("event: ").strip()
    return last


async def test_an_agent_joins_whichever_daemon_leads(nodes, token_file, tiny_model, tmp_path):
    """OC-HA-1706"""
    a, b, http = nodes
    ports = {a: free_port(), b: free_port()}
    for node in (a, b):
        node.server["agents"] = agents_server(token_file, ports[node])
    await a.start(remote_pool())
    await a.said('"event":"leading"')
    await b.start(remote_pool())
    await b.said('"event":"standing by"')
    agent = AgentProcess(tmp_path, "gpu-a", tiny_model)
    joins = [arg for node in (a, b) for arg in ("--join", f"grpc://127.0.0.1:{ports[node]}")]
    await agent.start(joins[1], token_file, *joins[2:])
    try:
        await a.said('"event":"agent joined"')
        assert await completes(http, a) == "end"
        engines = agent.engine_pids()
        await a.kill()
        await b.said('"event":"leading"')
        await b.said('"event":"agent joined"')
        assert await completes(http, b) == "end"
        assert agent.engine_pids() == engines  # the same engine served both leaders
    finally:
        await agent.stop()
