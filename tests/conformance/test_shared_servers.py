"""OC-TEST-8006: a test that shares an engine server starts only once that server, by its
own count, has finished what earlier tests left behind."""

from __future__ import annotations

from worker_adapters.base import GenerateRequest, Token
from worker_adapters.tgi_http import TGIAdapter
from worker_adapters.triton_grpc import TritonAdapter


async def test_a_request_whose_client_left_is_waited_out(tgi_server):
    """OC-TEST-8006"""
    await tgi_server.wait_idle()
    adapter = TGIAdapter(tgi_server.url)
    try:
        left = adapter.stream(GenerateRequest("[[stall:1]]gone", max_tokens=5))
        assert isinstance(await anext(left), Token)
        assert await tgi_server.busy() == 1  # stalled until the server sees the client go
        await left.aclose()  # the client hangs up; the server notices in its own time
        await tgi_server.wait_idle()
        # every slot is free again: as many holders as slots, none refused as overloaded
        holders = [
            adapter.stream(GenerateRequest(f"[[stall:1]]hold {i}", max_tokens=5)) for i in range(2)
        ]
        for holder in holders:
            assert isinstance(await anext(holder), Token)
        for holder in holders:
            await holder.aclose()
    finally:
        await adapter.close()


async def test_triton_model_counts_generators_that_outlive_their_client(triton_server):
    """OC-TEST-8006"""
    await triton_server.wait_idle()
    adapter = TritonAdapter(triton_server.url, model="tiny_llm")
    try:
        left = adapter.stream(GenerateRequest("[[stall:1]]gone", max_tokens=5))
        assert isinstance(await anext(left), Token)
        await left.aclose()  # Triton drops the request; pytriton's generator runs on
        assert await triton_server.busy() == 1
        await triton_server.wait_idle()  # until its bounded stall ends it
        events = [e async for e in adapter.stream(GenerateRequest("after", max_tokens=3))]
        assert len(events) == 4
    finally:
        await adapter.close()
