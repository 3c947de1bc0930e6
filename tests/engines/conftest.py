"""Real llama-server helpers: pools on models the project writes itself (the models are
tests/conftest.py's session fixtures), engines on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

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
