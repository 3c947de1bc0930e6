"""The embedded default served when `orchestratord serve` gets no --config: pool `tiny`,
model `tiny-llama`, two managed llama-server replicas of a model the project writes itself
(seeded random weights; see pool_managerd.tiny_gguf)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestratord.config import Config, parse_config
from pool_managerd.tiny_gguf import ensure_tiny_model, unprintable_logit_bias


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("ORCH_CACHE_DIR", str(Path(base) / "orchestratord")))


def default_model_path() -> Path:
    """The tiny model, written on first use (0.2 s, 470 KB)."""
    return ensure_tiny_model(cache_dir() / "models" / "tiny-llama-seed0.gguf")


def default_config(port: int = 8080) -> Config:
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "pools": [
                {
                    "id": "tiny",
                    "engine": "llamacpp",
                    "model": "tiny-llama",
                    "queue": {"capacity": 256, "policy": "reject"},
                    "replicas": {
                        "managed": {
                            "count": 2,
                            "slots": 2,
                            "model_path": str(default_model_path()),
                            "ctx": 512,
                            "threads": 1,
                        }
                    },
                    # one token per byte: the model's vocabulary is 256 byte tokens
                    "bytes_per_token": 1,
                    # readable ASCII from a random model, for demos
                    "engine_params": {"logit_bias": unprintable_logit_bias()},
                }
            ],
        },
        "embedded default",
    )
