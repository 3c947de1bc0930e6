"""Maps each pool's config to the launcher that brings its replicas to life."""

from __future__ import annotations

import os

from orchestratord.config import PoolConfig
from pool_managerd.launchers import (
    AttachLauncher,
    Launcher,
    LlamaServerLauncher,
    LlamaServerOptions,
    MockLauncher,
)
from worker_adapters.base import WorkerAdapter
from worker_adapters.llamacpp_http import LlamaCppAdapter
from worker_adapters.mock import MockConfig
from worker_adapters.openai_http import OpenAIAdapter
from worker_adapters.tgi_http import TGIAdapter
from worker_adapters.triton_grpc import TritonAdapter


def adapter_for_endpoint(pool: PoolConfig, url: str) -> WorkerAdapter:
    """The adapter that speaks `pool.engine`'s protocol to an external endpoint."""
    model = pool.engine_model or pool.model
    if pool.engine == "llamacpp":
        return LlamaCppAdapter(url, extra_params=pool.engine_params)
    if pool.engine == "tgi":
        return TGIAdapter(url)
    if pool.engine == "triton":
        return TritonAdapter(url, model=model)
    if pool.engine == "openai":
        key = os.environ.get(pool.api_key_env) if pool.api_key_env else None
        return OpenAIAdapter(
            url,
            model=model,
            chat=pool.chat,
            api_key=key,
            slots=pool.slots_per_endpoint,
            send_priority=pool.engine_priority,
            extra_params=pool.engine_params,
        )
    raise ValueError(f"engine {pool.engine!r} cannot be attached")


def launcher_for(pool: PoolConfig) -> Launcher:
    strict = pool.determinism == "strict"
    if pool.replicas.endpoints is not None:
        return AttachLauncher(
            pool.replicas.endpoints, lambda url: adapter_for_endpoint(pool, url),
            pool.health_interval_s, pool.health_misses,
        )  # fmt: skip
    managed = pool.replicas.managed
    assert managed is not None
    slots = 1 if strict else managed.slots
    if pool.engine == "mock":
        m = pool.mock
        return MockLauncher(MockConfig(
            slots=slots, ctx_per_slot=m.ctx_per_slot, token_rate=m.token_rate, model=pool.model,
            start_delay_s=m.start_delay_s, fail_after_tokens=m.fail_after_tokens,
            stall_after_tokens=m.stall_after_tokens, fail_start=m.fail_start,
            overloaded=m.overloaded,
        ))  # fmt: skip
    if pool.engine == "llamacpp":
        return LlamaServerLauncher(LlamaServerOptions(
            slots=slots, ctx=managed.ctx, threads=managed.threads, args=tuple(managed.args),
            deterministic=strict, extra_params=dict(pool.engine_params),
            health_interval_s=pool.health_interval_s, health_misses=pool.health_misses,
        ))  # fmt: skip
    # config validation only allows managed replicas for llamacpp and mock
    raise ValueError(f"engine {pool.engine!r} cannot be managed")
