"""OC-CTRL-2030: a slot lease is released however its runner ends, even when a cancel
reaches the runner before its first step; terminal paths skip tasks that already ended."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import yaml

from orchestrator_core.model import TaskState
from orchestratord.principals import open_principal
from orchestratord.service.admission import Submission
from tests.helpers import mock_pool, start_serve, wait_log

#: Holds its slot until canceled, so a missed cancel or a leaked lease cannot go unseen.
HOLD = "[[stall:0]]"


async def test_runner_cancelled_before_its_first_step_frees_its_slot(start_daemon):
    """OC-CTRL-2030"""
    api = await start_daemon(mock_pool(replicas={"managed": {"count": 1, "slots": 1}}))
    service = api.daemon.service
    pool = service.pools["mock"]
    (replica,) = pool.manager.replicas
    submission = Submission(
        model="mock-model", tenant="t", correlation_id="race", prompt=HOLD, max_tokens=4
    )
    # Submit and cancel with no await between: the dispatcher has leased the slot and
    # created the runner, which has not run a single step when the cancel lands.
    rec = service.admission.admit(submission)
    assert rec.task.state is TaskState.RUNNING and rec.runner is not None
    assert replica.busy == 1
    service.cancel(rec.task.id, open_principal("default"))
    await pool.wait_idle()
    assert replica.busy == 0 and not pool.running
    events = await api.events(rec.task.id)
    assert [name for name, _, _ in events] == ["end"]
    assert events[0][2]["finish_reason"] == "canceled"
    assert (await api.status(rec.task.id))["state"] == "canceled"
    # the slot serves the next task
    _, after, _ = await api.submit(model="mock-model", prompt="after", max_tokens=2)
    assert (await api.events(after["task_id"]))[-1][0] == "end"
    # and a shutdown finds nothing left to wait for or to end twice
    await service.shutdown(grace_s=600)
    assert service.active_count() == 0


async def _submit_and_cancel(base: str, submitter, canceller, task_id: str) -> None:
    """Submit and cancel one task back to back on two connections; the cancel may arrive
    first (404), so it is repeated once the task is known to exist."""
    body = {"task_id": task_id, "model": "mock-model", "prompt": HOLD, "max_tokens": 8}

    async def submit() -> int:
        async with submitter.post(f"{base}/v1/tasks", json=body) as r:
            return r.status

    async def cancel() -> int:
        async with canceller.post(f"{base}/v1/tasks/{task_id}/cancel") as r:
            return r.status

    submitted, canceled = await asyncio.gather(submit(), cancel())
    assert submitted == 202 and canceled in (204, 404)
    if canceled == 404:
        assert await cancel() == 204


async def _race(base: str, pairs: int) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(pairs)]
    async with aiohttp.ClientSession() as submitter, aiohttp.ClientSession() as canceller:
        await asyncio.gather(*(_submit_and_cancel(base, submitter, canceller, i) for i in ids))
    return ids


async def test_back_to_back_submit_and_cancel_leave_every_slot_free(start_daemon):
    """OC-CTRL-2030"""
    api = await start_daemon(
        mock_pool(queue={"capacity": 256}, replicas={"managed": {"count": 1, "slots": 8}})
    )
    ids = await _race(api.base, 64)
    pool = api.daemon.service.pools["mock"]
    await pool.wait_idle()
    for task_id in ids:
        assert (await api.status(task_id))["state"] == "canceled"
    _, info = await api.get("/v1/pools/mock")
    assert [(r["slots_free"], r["slots_total"]) for r in info["replicas"]] == [(8, 8)]
    # all eight slots still serve: eight holders run at once
    holders = [(await api.submit(model="mock-model", prompt=HOLD))[1] for _ in range(8)]
    for holder in holders:
        await api.wait_state(holder["task_id"], "running")
    for holder in holders:
        assert await api.cancel(holder["task_id"]) == 204


async def test_sigterm_after_the_race_exits_cleanly(tmp_path):
    """OC-CTRL-2030, OC-CTRL-2017"""
    config = {
        "server": {"shutdown_grace_s": 600},  # a wedged pool would hold the exit this long
        "pools": [mock_pool(queue={"capacity": 256}, replicas={"managed": {"slots": 8}})],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc, url = await start_serve(tmp_path / "c.yaml")
    await _race(url, 32)
    proc.send_signal(signal.SIGTERM)
    line = await wait_log(proc, "shutting down")
    assert '"active":0' in line  # nothing queued or running: no leaked lease kept a task
    assert await asyncio.wait_for(proc.wait(), 60) == 0
