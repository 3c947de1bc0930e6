"""Real llama-server fixtures: models the project writes itself, engines on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-b.gguf", TinyModelSpec(seed=1)
    )


@pytest.fixture(scope="session")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~150 tokens/s here: slow enough to cancel or kill an engine mid-stream."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "slow.gguf", TinyModelSpec.slow())


#: For tests that need a stream still running when they act on it: a random-weights model
#: samples its end-of-sequence token whenever it likes (a 1500-token request once ended
#: after 19 under `make stress`), so these streams ignore it and run to max_tokens.
LONG_STREAMS = {"engine_params": {"ignore_eos": True}}


def llama_pool(model: Path, id: str = "llama", **overrides):
    pool = {
        "id": id,
        "engine": "llamacpp",
        "model": f"{id}-model",
        "queue": {"capacity": 64},
        "replicas": {
            "managed": {"count": 1, "slots": 2, "model_path": str(model), "ctx": 512, "threads": 1}
        },
        "bytes_per_token": 1,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(pool.get(key), dict):
            merged = dict(pool[key])
            for k, v in value.items():
                merged[k] = (
                    {**merged[k], **v}
                    if isinstance(v, dict) and isinstance(merged.get(k), dict)
                    else v
                )
            pool[key] = merged
        else:
            pool[key] = value
    return pool
