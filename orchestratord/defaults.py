"""The embedded default config served when `orchestratord serve` gets no --config."""

from __future__ import annotations

from orchestratord.config import Config, parse_config


def default_config(port: int = 8080) -> Config:
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": port},
            "pools": [
                {
                    "id": "tiny",
                    "engine": "mock",
                    "model": "tiny-llama",
                    "queue": {"capacity": 64, "policy": "reject"},
                    "replicas": {"managed": {"count": 2, "slots": 2}},
                    "mock": {"token_rate": 50},
                }
            ],
        },
        "embedded default",
    )
