"""The dispatch gate: a leader whose lease is in doubt starts nothing, whatever wakes it
first (the lease's own timer usually steps it down before anything else runs; this holds
when it does not)."""

from __future__ import annotations

import asyncio

from orchestrator_core.model import TaskState
from orchestratord.config import parse_config
from orchestratord.service import Orchestrator
from orchestratord.service.admission import Submission
from tests.helpers import mock_pool


async def test_a_leader_in_doubt_dispatches_nothing_until_its_lease_is_sure():
    """OC-HA-1704"""
    leading = False
    config = parse_config({"pools": [mock_pool()], "store": {"url": "memory:"}})
    service = Orchestrator(config, may_dispatch=lambda: leading)
    await service.start()
    try:
        pool = service.pools["mock"]
        replicas = pool.manager.replicas
        async with asyncio.timeout(30):
            await pool.manager.wait_for(lambda: all(r.state == "ready" for r in replicas))
        rec = await service.submit(
            Submission(model="mock-model", tenant="t", correlation_id="c", prompt="hi")
        )
        pool.pump()  # a slot is free, the replica ready: only the gate holds it back
        assert rec.task.state is TaskState.QUEUED and not pool.running
        leading = True
        pool.pump()
        assert rec.task.state is TaskState.RUNNING and rec.task.id in pool.running
    finally:
        await service.shutdown(0)
