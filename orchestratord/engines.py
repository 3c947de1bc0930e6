"""The engine registry: every engine a pool can name, with how its replicas attach to an
endpoint, how they are managed (spawned here), and what the engine needs.

The config's `engine` choices and its validation derive from `ENGINES`; nothing else in the
daemon branches on engine names. A new engine is one adapter module plus one entry here
(and its registration in the conformance suite).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # the factories read a pool's config; config reads this table's names
    from orchestratord.config import PoolConfig


@dataclass(frozen=True, slots=True)
class EngineKind:
    name: str
    #: The adapter for one external endpoint of this engine; None: cannot be attached.
    attach: Callable[[PoolConfig, str], WorkerAdapter] | None = None
    #: The launcher that spawns this engine's replicas here; None: cannot be managed.
    manage: Callable[[PoolConfig], Launcher] | None = None
    #: Managed replicas need `replicas.managed.model_path` (a model file on this host).
    needs_model_path: bool = False
    #: The engine renders conversations with its own chat template (a chat route).
    chat: bool = True
    #: Its prompt cache is per slot (a slot reuses only its own last prompt, and a request
    #: can name its slot: llama.cpp `id_slot`), else shared by the replica's sequences.
    slot_cache: bool = False


def _llamacpp_endpoint(pool: PoolConfig, url: str) -> WorkerAdapter:
    return LlamaCppAdapter(url, extra_params=pool.engine_params)


def _llama_server(pool: PoolConfig) -> Launcher:
    managed = pool.replicas.managed
    assert managed is not None
    return LlamaServerLauncher(LlamaServerOptions(
        slots=pool.slots_per_replica, ctx=managed.ctx, threads=managed.threads,
        args=tuple(managed.args), deterministic=pool.strict,
        extra_params=dict(pool.engine_params), health_interval_s=pool.health_interval_s,
        health_misses=pool.health_misses,
    ))  # fmt: skip


def _mock(pool: PoolConfig) -> Launcher:
    m = pool.mock
    return MockLauncher(MockConfig(
        slots=pool.slots_per_replica, ctx_per_slot=m.ctx_per_slot, token_rate=m.token_rate,
        model=pool.model, start_delay_s=m.start_delay_s, fail_after_tokens=m.fail_after_tokens,
        stall_after_tokens=m.stall_after_tokens, fail_start=m.fail_start, overloaded=m.overloaded,
        perturb_replica=m.perturb_replica,
    ))  # fmt: skip


def _openai_endpoint(pool: PoolConfig, url: str) -> WorkerAdapter:
    key = os.environ.get(pool.api_key_env) if pool.api_key_env else None
    return OpenAIAdapter(
        url, model=pool.engine_model or pool.model, chat=pool.chat, api_key=key,
        slots=pool.slots_per_endpoint, send_priority=pool.engine_priority,
        extra_params=pool.engine_params,
    )  # fmt: skip


ENGINES: dict[str, EngineKind] = {
    kind.name: kind
    for kind in (
        EngineKind(
            "llamacpp", _llamacpp_endpoint, _llama_server, needs_model_path=True, slot_cache=True
        ),
        EngineKind("tgi", lambda pool, url: TGIAdapter(url)),
        EngineKind(
            "triton",
            lambda pool, url: TritonAdapter(url, model=pool.engine_model or pool.model),
            chat=False,
        ),
        EngineKind("openai", _openai_endpoint),
        EngineKind("mock", manage=_mock),  # in-process: tests, benchmarks, demos
    )
}


def launcher_for(pool: PoolConfig) -> Launcher:
    """How `pool`'s replicas come to life (config validation guarantees the kind fits)."""
    kind = ENGINES[pool.engine]
    endpoints = pool.replicas.endpoints
    if endpoints is not None:
        attach = kind.attach
        assert attach is not None
        return AttachLauncher(
            endpoints, lambda url: attach(pool, url), pool.health_interval_s, pool.health_misses
        )
    assert kind.manage is not None
    return kind.manage(pool)
