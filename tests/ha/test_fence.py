"""The fence on its own: a store writing for an epoch that is no longer current gets
nothing in, says why once, and makes no further write."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest

from orchestratord.store import StoreError, TaskRow
from orchestratord.store.postgres import PostgresStore


async def test_a_stale_epoch_writes_nothing_and_ends_the_term(postgres, tmp_path):
    """OC-HA-1703"""
    url = postgres.database(f"fence{uuid.uuid4().hex[:8]}")
    current = PostgresStore(url, tmp_path / "files", epoch=0)  # the row's epoch, as migrated
    await current.open()
    ok = current.admitted(TaskRow("kept", "p", "queued", "{}", 1))
    await ok
    await current.close()

    stale = PostgresStore(url, tmp_path / "files", epoch=7)
    await stale.open()
    told: list[str] = []
    lost = asyncio.get_running_loop().create_future()
    stale.on_unusable = lambda why: (told.append(why), lost.done() or lost.set_result(None))
    with pytest.raises(StoreError, match="deposed"):
        await stale.admitted(TaskRow("fenced", "p", "queued", "{}", 2))
    await lost
    with pytest.raises(StoreError, match="deposed"):  # no further write is even tried
        await stale.admitted(TaskRow("later", "p", "queued", "{}", 3))
    await stale.close()
    assert told == ["deposed: leadership epoch 7 is no longer current"]
    with psycopg.connect(url) as db:
        assert db.execute("SELECT id FROM tasks").fetchall() == [("kept",)]
