"""`make determinism`: start orchestratord with strict llama.cpp and mock pools (two
replicas each), run the suite with `orchctl determinism`, reload every pool (fresh engine
processes on the same model), run it again comparing with the first proof. Proof files go
to `determinism-proofs/`; the exit code is the gate.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

from pool_managerd.launchers import free_port
from pool_managerd.probe import poll_until
from pool_managerd.tiny_gguf import write_tiny_model

BIN = Path(sys.executable).parent


def wait_ready(url: str, *, after_reload: bool = False) -> None:
    """Until every pool has two Ready replicas (and, after a reload, only the new two)."""

    async def ready(http: httpx.AsyncClient) -> bool:
        try:
            pools = (await http.get(f"{url}/v1/pools")).json()["pools"]
        except httpx.TransportError:
            return False  # still starting
        return all(
            sum(r["state"] == "ready" for r in p["replicas"]) >= 2
            and (not after_reload or len(p["replicas"]) == 2)
            for p in pools
        )

    async def wait() -> None:
        async with httpx.AsyncClient() as http, asyncio.timeout(120):
            await poll_until(lambda: ready(http), first_delay_s=0.1)

    try:
        asyncio.run(wait())
    except TimeoutError:
        raise SystemExit("pools did not become ready") from None


def main() -> int:
    out = Path("determinism-proofs")
    out.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    model = write_tiny_model(tmp / "tiny.gguf")
    port = free_port()
    config = {
        "server": {"port": port},
        "pools": [
            {
                "id": "llama",
                "engine": "llamacpp",
                "model": "tiny",
                "determinism": "strict",
                "bytes_per_token": 1,
                "replicas": {
                    "managed": {"count": 2, "model_path": str(model), "ctx": 512, "threads": 1}
                },
            },
            {
                "id": "mock",
                "engine": "mock",
                "model": "mock",
                "determinism": "strict",
                "replicas": {"managed": {"count": 2}},
            },
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    daemon = subprocess.Popen(
        [
            BIN / "orchestratord",
            "serve",
            "--config",
            str(tmp / "config.yaml"),
            "--log-level",
            "warning",
        ]
    )
    status = 0
    try:
        wait_ready(url)
        for pool in ("llama", "mock"):
            first = out / f"{pool}.json"
            status |= subprocess.call(
                [BIN / "orchctl", "--url", url, "determinism", "--pool", pool, "--out", str(first)]
            )
            reload_to = str(model) if pool == "llama" else "mock"
            httpx.post(f"{url}/v1/pools/{pool}/reload", json={"model": reload_to})
        wait_ready(url, after_reload=True)
        for pool in ("llama", "mock"):
            status |= subprocess.call(
                [
                    BIN / "orchctl",
                    "--url",
                    url,
                    "determinism",
                    "--pool",
                    pool,
                    "--compare",
                    str(out / f"{pool}.json"),
                    "--out",
                    str(out / f"{pool}-after-restart.json"),
                ]
            )
    finally:
        daemon.terminate()
        daemon.wait(60)
    return status


if __name__ == "__main__":
    sys.exit(main())
