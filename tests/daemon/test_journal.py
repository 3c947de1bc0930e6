"""When the daemon journals a task and in what form: the admission commit beside the
engine's start, and output chunks as columns (read back in the earlier form too)."""

from __future__ import annotations

from typing import Any

import orjson

from orchestratord.service.journal import tokens_of
from orchestratord.service.output import Output
from tests.helpers import mock_pool


async def test_the_admission_commit_does_not_delay_the_engine_request(start_daemon):
    """OC-STORE-1001: a task admitted with free slots starts its engine request before its
    admission is committed (the commit overlaps the engine's work; only the client's answer
    waits for it)."""
    api = await start_daemon(mock_pool())
    service = api.daemon.service
    order: list[str] = []
    for replica in service.pools["mock"].manager.replicas:
        adapter = replica.adapter
        assert adapter is not None
        adapter.stream = _recorded(adapter.stream, order)  # type: ignore[method-assign]
    on_commit = service.store.on_commit
    assert on_commit is not None

    def committed(elapsed: float) -> None:
        order.append("commit")
        on_commit(elapsed)

    service.store.on_commit = committed
    status, _, _ = await api.submit(model="mock-model", prompt="p", max_tokens=1)
    assert status == 202 and order[:2] == ["engine", "commit"]


def _recorded(stream: Any, order: list[str]) -> Any:
    def started(request: Any) -> Any:
        order.append("engine")
        return stream(request)

    return started


def test_output_journaled_in_the_earlier_format_still_reads_back():
    """OC-STORE-1006: output chunks are columns now; a journal written before holds one
    array per token, and both read back as the same tokens, in order."""
    out = Output()
    for i, (text, ids) in enumerate([("a", (1,)), ("日本", (2, 3)), ("", ())]):
        out.append(i, text, ids)
    earlier = orjson.dumps([[0, "a", [1]]]).decode()
    now = orjson.dumps(out.columns(1)).decode()
    assert tokens_of([earlier, now]) == [(0, "a", (1,)), (1, "日本", (2, 3)), (2, "", ())]
