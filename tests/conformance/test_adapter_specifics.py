"""Engine-specific behaviour beyond the shared suite."""

from __future__ import annotations

import grpc
import pytest

from orchestrator_core.errors import ErrorCode
from pool_managerd.launchers import free_port
from worker_adapters.base import AdapterError, End, GenerateRequest, Token
from worker_adapters.http_errors import status_error
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.openai_http import OpenAIAdapter
from worker_adapters.triton_grpc import _classify


def test_overload_signals_map_to_one_retriable_error():
    """OC-ADAPT-3004"""
    for status in (429, 503):
        err = status_error(status, b'{"error":"Model is overloaded"}', "x")
        assert err.code is ErrorCode.REPLICA_EXHAUSTED and err.retriable
        assert "overloaded" in err.message
    err = _classify("Exceeds maximum queue size", grpc.StatusCode.UNAVAILABLE)
    assert err.code is ErrorCode.REPLICA_EXHAUSTED and err.retriable
    assert _classify("bad input", grpc.StatusCode.INVALID_ARGUMENT).code is (
        ErrorCode.INVALID_PARAMS
    )
    assert _classify("connection lost", grpc.StatusCode.UNAVAILABLE).code is (
        ErrorCode.WORKER_RESET
    )
    err = status_error(422, b'{"error":"Input validation error","error_type":"validation"}', "tgi")
    assert err.code is ErrorCode.INVALID_PARAMS and "Input validation error" in err.message


async def test_openai_chat_route_streams_from_real_llama_server(llama_server):
    """OC-ADAPT-3002"""
    adapter = OpenAIAdapter(llama_server.url, model="tiny", chat=True)
    try:
        events = [e async for e in adapter.stream(GenerateRequest("hi", max_tokens=5, seed=1))]
    finally:
        await adapter.close()
    assert all(isinstance(e, Token) for e in events[:-1]) and isinstance(events[-1], End)
    assert events[-1].tokens_out == 5 and events[-1].finish_reason == "length"


async def test_a_stream_on_a_stopped_replica_is_a_worker_reset():
    """OC-ADAPT-3006"""
    for adapter in (OpenAIAdapter("http://127.0.0.1:9", model="m"), LlamaCppAdapter("http://x")):
        await adapter.close()  # the replica was stopped while a task was on its way to it
        with pytest.raises(AdapterError) as err:
            _ = [e async for e in adapter.stream(GenerateRequest("x", max_tokens=1))]
        assert err.value.code is ErrorCode.WORKER_RESET and err.value.retriable


async def test_a_refused_connection_names_the_engine_not_its_address():
    """OC-LOAD-1209: a client saw `Cannot connect to host 127.0.0.1:8001 ...`."""
    port = free_port()  # nothing listens there
    adapter = OpenAIAdapter(f"http://127.0.0.1:{port}", model="m")
    try:
        with pytest.raises(AdapterError) as err:
            _ = [e async for e in adapter.stream(GenerateRequest("x", max_tokens=1))]
    finally:
        await adapter.close()
    assert err.value.code is ErrorCode.WORKER_RESET and err.value.retriable
    assert err.value.message == "openai: could not connect to the engine"
    assert err.value.detail is not None and str(port) in err.value.detail
