"""Batch API throughput on the tiny llama.cpp model against the same items submitted
natively, in the same run, on the same daemon (one managed llama-server, 4 slots).

- native: every item as `POST /v1/tasks` (priority batch) at once, then each stream read
  to its end;
- Batch API: the items as one JSONL file — upload, create, poll until `completed`,
  download the output.

    python -m test_harness.bench.batches [--items 200] [--tokens 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from pool_managerd.launchers import die_with_parent, free_port
from pool_managerd.tiny_gguf import write_tiny_model
from test_harness.bench.common import stop

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


async def native(http: aiohttp.ClientSession, url: str, items: int, tokens: int) -> float:
    started = time.perf_counter()

    async def one(i: int) -> None:
        body = {"model": "tiny", "prompt": f"item {i}", "max_tokens": tokens, "seed": i,
                "priority": "batch"}  # fmt: skip
        async with http.post(f"{url}/v1/tasks", json=body) as r:
            task_id = (await r.json())["task_id"]
        async with http.get(f"{url}/v1/tasks/{task_id}/stream") as r:
            await r.read()

    await asyncio.gather(*(one(i) for i in range(items)))
    return items / (time.perf_counter() - started)


class BatchEnded:
    """Reads the daemon's log as it comes (its pipe must never fill) and wakes whoever
    waits once a batch has ended — the daemon logs `batch ended` when its output is kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.ended = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read(proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            if b'"batch ended"' in line:
                self.ended.set()


async def batch_api(
    http: aiohttp.ClientSession, url: str, items: int, tokens: int, log: BatchEnded
) -> float:
    started = time.perf_counter()
    lines = "".join(
        json.dumps({"custom_id": f"item-{i}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "tiny", "prompt": f"item {i}", "max_tokens": tokens,
                             "seed": i}}) + "\n"
        for i in range(items)
    )  # fmt: skip
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", lines.encode(), filename="items.jsonl")
    async with http.post(f"{url}/v1/files", data=form) as r:
        file_id = (await r.json())["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/completions", "completion_window": "24h"}
    async with http.post(f"{url}/v1/batches", json=body) as r:
        batch_id = (await r.json())["id"]
    await log.ended.wait()
    async with http.get(f"{url}/v1/batches/{batch_id}") as r:
        batch = await r.json()
    assert batch["status"] == "completed", batch
    async with http.get(f"{url}/v1/files/{batch['output_file_id']}/content") as r:
        assert len((await r.read()).splitlines()) == items
    return items / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = write_tiny_model(tmp / "tiny.gguf")
        port = free_port()
        config = {
            "server": {"port": port, "state_dir": str(tmp / "state")},
            "batch": {"window": 8},
            "pools": [{
                "id": "tiny", "engine": "llamacpp", "model": "tiny",
                "queue": {"capacity": 4096},
                "replicas": {"managed": {"count": 1, "slots": 4, "ctx": 1024, "threads": 1,
                                         "model_path": str(model)}},
            }],
        }  # fmt: skip
        (tmp / "c.yaml").write_text(yaml.safe_dump(config))
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "orchestratord"), "serve", "--config", str(tmp / "c.yaml"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        assert proc.stdout is not None
        while b"serving on" not in (line := await proc.stdout.readline()):
            if not line:
                raise RuntimeError("orchestratord exited before serving")
        log = BatchEnded(proc)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(None)
            ) as http:
                await native(http, url, 16, args.tokens)  # warm up
                rate_native = await native(http, url, args.items, args.tokens)
                rate_batch = await batch_api(http, url, args.items, args.tokens, log)
        finally:
            await stop(proc)
    print(f"native    {rate_native:7.1f} items/s")
    print(f"Batch API {rate_batch:7.1f} items/s   ratio {rate_batch / rate_native:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
