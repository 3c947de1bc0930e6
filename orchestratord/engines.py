"""Maps each pool's config to the launcher that brings its replicas to life."""

from __future__ import annotations

from orchestratord.config import PoolConfig
from pool_managerd.launchers import Launcher, MockLauncher
from worker_adapters.mock import MockConfig


def launcher_for(pool: PoolConfig) -> Launcher:
    managed = pool.replicas.managed
    if pool.engine == "mock":
        assert managed is not None
        m = pool.mock
        return MockLauncher(MockConfig(
            slots=1 if pool.determinism == "strict" else managed.slots,
            ctx_per_slot=m.ctx_per_slot, token_rate=m.token_rate, model=pool.model,
            start_delay_s=m.start_delay_s, fail_after_tokens=m.fail_after_tokens,
            stall_after_tokens=m.stall_after_tokens, fail_start=m.fail_start,
        ))  # fmt: skip
    raise NotImplementedError(f"engine {pool.engine!r} is not available in this build")
