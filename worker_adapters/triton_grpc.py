"""NVIDIA Triton Inference Server over KServe v2 gRPC (`tritonclient.grpc.aio`).

Streaming uses `ModelStreamInfer` against a decoupled model with the tensor names of
Triton's LLM backends (TensorRT-LLM, vLLM backend): `text_input`, `max_tokens`, `stream`,
`random_seed`, `temperature`, `top_k`, `top_p` in; `text_output` out — only the inputs the
model declares are sent. Responses are matched by request id; the end is the response
carrying `triton_final_response`; an `error_message` in the stream fails the request;
`UNAVAILABLE` "Exceeds maximum queue size" is retriable overload. Cancel = cancel the call.

`tritonclient.grpc.aio` has no switch for `triton_enable_empty_final_response` (its sync
client sets that request parameter), and some backends send the final flag on an empty
response, so this builds the request with the client's own helper, sets the parameter,
and drives the stub's bidirectional stream itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.grpc import InferInput, InferResult
from tritonclient.grpc._utils import _get_inference_request
from tritonclient.utils import InferenceServerException

from orchestrator_core.errors import ErrorCode
from worker_adapters.base import (
    AdapterError,
    Capabilities,
    End,
    EngineStats,
    EventSink,
    GenerateRequest,
    StreamEvent,
    Token,
    relay_pulled,
)

ENGINE = "triton"
_OPTIONAL_INPUTS: dict[str, tuple[str, Any]] = {
    "random_seed": ("UINT64", np.uint64),
    "temperature": ("FP32", np.float32),
    "top_k": ("INT32", np.int32),
    "top_p": ("FP32", np.float32),
}


def _classify(message: str, code: grpc.StatusCode | None = None) -> AdapterError:
    if "Exceeds maximum queue size" in message or code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return AdapterError(
            ErrorCode.REPLICA_EXHAUSTED, f"triton overloaded: {message}", engine=ENGINE
        )
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
        return AdapterError(ErrorCode.INVALID_PARAMS, f"triton: {message}", engine=ENGINE)
    return AdapterError(ErrorCode.WORKER_RESET, f"triton: {message}", engine=ENGINE)


class TritonAdapter:
    engine = ENGINE

    def __init__(self, url: str, *, model: str) -> None:
        self.url = url.removeprefix("grpc://")
        self.model = model
        self._client = triton.InferenceServerClient(self.url)
        self._config: Any = None

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        try:
            return bool(
                await self._client.is_server_ready()
                and await self._client.is_model_ready(self.model)
            )
        except InferenceServerException:
            return False

    async def stats(self) -> EngineStats:
        # Triton's load lives in its separate metrics endpoint, not on the gRPC port
        return EngineStats()

    async def _model_config(self) -> Any:
        if self._config is None:
            self._config = (await self._client.get_model_config(self.model)).config
        return self._config

    async def capabilities(self) -> Capabilities:
        try:
            config = await self._model_config()
            server = await self._client.get_server_metadata()
        except InferenceServerException as e:
            raise _classify(str(e)) from e
        instances = sum(g.count or 1 for g in config.instance_group) or 1
        return Capabilities(ENGINE, f"triton {server.version}", instances, None, self.model)

    def _tensor(self, name: str, datatype: str, value: Any, batched: bool) -> InferInput:
        array = np.array(
            [[value]] if batched else [value], dtype=object if datatype == "BYTES" else None
        )
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        return tensor

    async def _request(self, req: GenerateRequest, request_id: str) -> Any:
        config = await self._model_config()
        declared = {i.name for i in config.input}
        batched = config.max_batch_size > 0
        tensors = [
            self._tensor("text_input", "BYTES", req.prompt.encode(), batched),
            self._tensor("max_tokens", "INT32", np.int32(req.max_tokens), batched),
        ]
        if "stream" in declared:
            tensors.append(self._tensor("stream", "BOOL", True, batched))
        values = {
            "random_seed": req.seed,
            "temperature": req.temperature,
            "top_k": req.top_k,
            "top_p": req.top_p,
        }
        for name, value in values.items():
            if value is not None and name in declared:
                datatype, cast = _OPTIONAL_INPUTS[name]
                tensors.append(self._tensor(name, datatype, cast(value), batched))
        request = _get_inference_request(
            model_name=self.model, inputs=tensors, model_version="", request_id=request_id,
            outputs=None, sequence_id=0, sequence_start=False, sequence_end=False,
            priority=0, timeout=None, parameters=None,
        )  # fmt: skip
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        return request

    async def relay(self, request: GenerateRequest, sink: EventSink) -> None:
        await relay_pulled(self.stream(request), sink)

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[StreamEvent, None]:
        request_id = uuid.uuid4().hex
        message = await self._request(request, request_id)
        finished = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield message
            await finished.wait()  # keep the stream open until our final response

        call = self._client._client_stub.ModelStreamInfer(requests())
        sent = 0
        try:
            async for response in call:
                if response.error_message:
                    raise _classify(response.error_message)
                result = response.infer_response
                if result.id != request_id:
                    continue
                if result.outputs:
                    out = InferResult(result).as_numpy("text_output")
                    if out is not None:
                        text = b"".join(np.asarray(out).reshape(-1)).decode(errors="replace")
                        if text:
                            sent += 1
                            yield Token(text)
                final = result.parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    yield End("length" if sent >= request.max_tokens else "stop", sent)
                    return
            raise AdapterError(
                ErrorCode.WORKER_RESET, "triton ended the stream early", engine=ENGINE
            )
        except grpc.aio.AioRpcError as e:
            raise _classify(e.details() or str(e), e.code()) from e
        finally:
            finished.set()
            call.cancel()
