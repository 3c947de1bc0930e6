"""Benchmark (not a test): how two backlogged tenants share a pool when one sends prompts
ten times longer, under request fairness and under token fairness (a virtual token counter
per tenant, .specs/41-placement-fairness.md), on real llama-server, in one run.

One daemon, three pools of the project's tiny model (1 replica x 2 slots each):
`requests` (`queue.fairness: requests`), `tokens` (`fairness: tokens`, equal weights) and
`tokens 1:3` (`fairness: tokens`, the short tenant weighted 3). Each tenant keeps 16 requests
outstanding (closed loop) until 160 have completed; a tenant's service is what token
fairness charges: prompt tokens + 2 x output tokens (the default `token_costs`), counted by
the client (one token per byte of these prompts, and the `end` event's output count).

    python -m test_harness.bench.fairness
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp

from orchestratord.api_models import KeyCreate, KeyRole
from orchestratord.keyring import make_entry, write_entries
from pool_managerd.launchers import free_port
from pool_managerd.tiny_gguf import write_tiny_model
from test_harness.bench.common import serve_daemon

PROMPT = {"long": 200, "short": 20}  # tokens: one per byte, no spaces
MAX_TOKENS = 16
OUTSTANDING = 16
COMPLETIONS = 160
COSTS = {"input": 1, "output": 2}


def pool(pool_id: str, model: Path, fairness: str, weights: dict[str, int]) -> dict[str, object]:
    return {
        "id": pool_id, "engine": "llamacpp", "model": pool_id, "bytes_per_token": 1,
        "engine_params": {"ignore_eos": True},
        "queue": {"capacity": 256, "fairness": fairness, "tenant_weights": weights,
                  "token_costs": COSTS},
        "replicas": {"managed": {
            "count": 1, "slots": 2, "model_path": str(model), "ctx": 2 * 256, "threads": 1,
        }},
    }  # fmt: skip


async def serve(daemon: str, model: str, keys: dict[str, str]) -> dict[str, int]:
    """Run both tenants until COMPLETIONS tasks completed: each tenant's service."""
    served = dict.fromkeys(PROMPT, 0)
    done = 0

    async def client(http: aiohttp.ClientSession, tenant: str, n: int) -> None:
        nonlocal done
        headers = {"Authorization": f"Bearer {keys[tenant]}"}
        while done < COMPLETIONS:
            prompt = f"{tenant[0]}{n}:" + "x" * (PROMPT[tenant] - 4)
            body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS}
            async with http.post(f"{daemon}/v1/tasks", json=body, headers=headers) as r:
                url = daemon + (await r.json())["stream_url"]
            tokens, event = 0, b""
            async with http.get(url, headers=headers) as r:
                async for line in r.content:  # the `end` event has the engine's count
                    if line.startswith(b"event: "):
                        event = line[7:].strip()
                    elif event == b"end" and line.startswith(b"data: "):
                        tokens = json.loads(line[6:])["tokens_out"]
            if done < COMPLETIONS:
                served[tenant] += COSTS["input"] * len(prompt) + COSTS["output"] * tokens
                done += 1
            n += OUTSTANDING

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http, t, i) for t in PROMPT for i in range(OUTSTANDING)))
    return served


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    model = write_tiny_model(tmp / "tiny.gguf")
    entries, keys = [], {}
    for tenant in PROMPT:
        entry, keys[tenant] = make_entry(KeyCreate(tenant=tenant, roles=[KeyRole.SUBMIT]))
        entries.append(entry)
    write_entries(tmp / "keys.yaml", entries)
    port = free_port()
    config = {
        "server": {"port": port, "state_dir": str(tmp / "state"),
                   "keys_file": str(tmp / "keys.yaml")},
        "pools": [pool("requests", model, "requests", {}), pool("tokens", model, "tokens", {}),
                  pool("tokens-1-3", model, "tokens", {"short": 3})],
    }  # fmt: skip
    proc, daemon = await serve_daemon(tmp, config, {"Authorization": f"Bearer {keys['long']}"})
    try:
        print(
            f"\nlong: {PROMPT['long']}-token prompts, short: {PROMPT['short']}; {MAX_TOKENS} "
            f"output tokens each; {OUTSTANDING} outstanding per tenant; {COMPLETIONS} tasks\n"
            "| pool | fairness | weights long : short | long's share | short's share "
            "| configured share of long | weighted difference / bound |\n"
            "|---|---|---|---:|---:|---:|---:|"
        )
        # the spec's bound (OC-FAIR-1511): 2·S·L·max(1/φ), S = 2 slots, L = the longest task
        longest = COSTS["input"] * (PROMPT["long"] + 1) + COSTS["output"] * MAX_TOKENS
        for pool_id, fairness, weights in (
            ("requests", "requests", {}), ("tokens", "tokens", {}),
            ("tokens-1-3", "tokens", {"short": 3}),
        ):  # fmt: skip
            served = await serve(daemon, pool_id, keys)
            total = sum(served.values())
            phi = {t: weights.get(t, 1) for t in PROMPT}
            configured = f"{phi['long'] / sum(phi.values()):.0%}" if fairness == "tokens" else "—"
            gap = abs(served["long"] / phi["long"] - served["short"] / phi["short"])
            bound = 2 * 2 * longest / min(phi.values())
            print(
                f"| {pool_id} | {fairness} | {phi['long']} : {phi['short']} "
                f"| {served['long'] / total:.0%} | {served['short'] / total:.0%} | {configured} "
                f"| {gap:,.0f} / {bound:,.0f} |",
                flush=True,
            )
    finally:
        proc.terminate()
        await proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
