"""`orchctl batch` and `orchctl batches`: many jobs at once.

By default a batch goes through the daemon's Batch API — uploaded, run durably at `batch`
priority inside the daemon (it survives a restart), watched with a progress bar, and its
results downloaded. `--client-side` runs the jobs from here instead, as individual tasks
with bounded concurrency (nothing survives the client).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from orchestratord.batch_models import Batch
from orchestratord.client.cli_common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_REJECTED,
    client_of,
    run_async,
)
from orchestratord.client.sdk import Backpressure, ClientError, OrchClient

_FINAL = {"completed", "failed", "expired", "cancelled"}
#: How often the progress bar asks for the batch's counts (a person watches it).
_WATCH_S = 0.5


def _read_jobs(jobs: Path, model: str | None) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    for n, line in enumerate(jobs.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise click.UsageError(f"{jobs}:{n}: not a JSON object: {e}") from None
        target = body.get("body", body) if "custom_id" in body else body
        if "model" not in target:
            if model is None:
                raise click.UsageError(f"{jobs}:{n}: no model (give --model)")
            target["model"] = model
        bodies.append(body)
    return bodies


def _as_batch_line(n: int, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI batch line as it is; a task request as a `/v1/completions` line."""
    if "custom_id" in body:
        return body
    keep = ("model", "prompt", "max_tokens", "seed", "temperature", "top_p", "top_k", "stop")
    request = {k: body[k] for k in keep if k in body}
    request.update({k: v for k, v in body.get("sampling", {}).items() if k in keep})
    return {"custom_id": f"line-{n}", "method": "POST", "url": "/v1/completions", "body": request}


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("jobs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write one JSON result per job, in input order.",
)
@click.option("--model", help="Model for jobs that do not name one.")
@click.option(
    "--client-side",
    is_flag=True,
    help="Run the jobs from here as individual tasks instead of through the Batch API.",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True,
    help="--client-side: jobs in flight at once.",
)  # fmt: skip
@click.option(
    "--max-attempts", type=click.IntRange(1), default=20, show_default=True,
    help="--client-side: submissions per job when the daemon pushes back (429/503).",
)  # fmt: skip
@click.option("--no-progress", is_flag=True)
@click.pass_context
@run_async
async def batch(
    ctx: click.Context,
    jobs: Path,
    out: Path,
    model: str | None,
    client_side: bool,
    concurrency: int,
    max_attempts: int,
    no_progress: bool,
) -> None:
    """Run every job in JOBS — JSON lines of OpenAI batch requests (`custom_id`, `method`,
    `url`, `body`) or of task requests (`prompt`, `max_tokens`...) — and write the results
    to --out in input order."""
    bodies = await asyncio.to_thread(_read_jobs, jobs, model)
    async with client_of(ctx) as client:
        if client_side:
            results = await _client_side(client, bodies, concurrency, max_attempts, no_progress)
        else:
            results = await _through_the_batch_api(client, jobs.name, bodies, no_progress)
    with out.open("w") as f:
        f.writelines(json.dumps(result) + "\n" for result in results)
    counts = Counter(r["state"] for r in results)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    click.echo(f"{len(bodies)} jobs: {summary}; results in {out}", err=True)
    if counts.get("rejected"):
        sys.exit(EXIT_REJECTED)
    if set(counts) - {"completed"}:
        sys.exit(EXIT_FAILED)


async def _through_the_batch_api(
    client: OrchClient, name: str, bodies: list[dict[str, Any]], no_progress: bool
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    lines = [_as_batch_line(n, body) for n, body in enumerate(bodies, 1)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = await client.upload_batch_file(content, name)
    assert uploaded.endpoint is not None
    created = await client.create_batch(uploaded.id, uploaded.endpoint)
    click.echo(f"batch {created.id} ({len(lines)} requests)", err=True)
    bar = tqdm(total=len(lines), unit="req", disable=no_progress, file=sys.stderr)
    done = await _watch(client, created, bar.update)
    bar.close()
    by_id: dict[str, dict[str, Any]] = {}
    for file_id in (done.output_file_id, done.error_file_id):
        if file_id:
            for raw in (await client.file_content(file_id)).splitlines():
                result = json.loads(raw)
                by_id[result["custom_id"]] = result
    out = []
    for n, line in enumerate(lines, 1):
        result = by_id.get(line["custom_id"], {"error": {"code": "MISSING"}, "response": None})
        ok = result.get("response") is not None and not result.get("error")
        out.append({"line": n, "state": "completed" if ok else "failed", **result})
    return out


async def _watch(client: OrchClient, batch: Batch, progress: Callable[[int], object]) -> Batch:
    shown = 0
    while True:
        counts = batch.request_counts
        finished = counts.completed + counts.failed
        if finished > shown:
            progress(finished - shown)
            shown = finished
        if batch.status in _FINAL:
            return batch
        await asyncio.sleep(_WATCH_S)
        batch = await client.batch(batch.id)


async def _client_side(
    client: OrchClient,
    bodies: list[dict[str, Any]],
    concurrency: int,
    max_attempts: int,
    no_progress: bool,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    results: list[dict[str, Any]] = [{} for _ in bodies]
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(bodies), unit="job", disable=no_progress, file=sys.stderr)

    async def one(i: int) -> None:
        async with gate:
            result = await _run_one(client, bodies[i], max_attempts, asyncio.sleep)
        results[i] = {"line": i + 1, **result}
        bar.update(1)

    await asyncio.gather(*(one(i) for i in range(len(bodies))))
    bar.close()
    return results


@click.group()
def batches() -> None:
    """Batches run by the daemon's Batch API."""


@batches.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@click.option("--after", help="The last batch id of the previous page.")
@click.pass_context
@run_async
async def list_batches(ctx: click.Context, limit: int, after: str | None) -> None:
    """Batches, newest first: id, status, completed/failed/total, created."""
    async with client_of(ctx) as client:
        page = await client.batches(after, limit)
    for b in page.data:
        c = b.request_counts
        click.echo(f"{b.id}  {b.status:<11} {c.completed}/{c.failed}/{c.total}  {b.endpoint}")
    if page.has_more:
        click.echo(f"(more: --after {page.last_id})", err=True)


@batches.command("get")
@click.argument("batch_id")
@click.pass_context
@run_async
async def get_batch(ctx: click.Context, batch_id: str) -> None:
    """One batch, as JSON."""
    async with client_of(ctx) as client:
        click.echo((await client.batch(batch_id)).model_dump_json(indent=2))


@batches.command("cancel")
@click.argument("batch_id")
@click.pass_context
@run_async
async def cancel_batch(ctx: click.Context, batch_id: str) -> None:
    """Cancel a batch: running items are canceled, what finished is kept."""
    async with client_of(ctx) as client:
        click.echo(f"{batch_id}: {(await client.cancel_batch(batch_id)).status}")


async def _run_one(
    client: OrchClient,
    body: dict[str, Any],
    max_attempts: int,
    sleep: Callable[[float], Awaitable[None]],
) -> dict[str, Any]:
    """Submit one job (backing off on 429/503 as told), follow it to its end."""
    for attempt in range(1, max_attempts + 1):
        try:
            admitted = await client.submit(body)
            break
        except Backpressure as e:
            if attempt == max_attempts:
                return {"state": "rejected", "error": e.envelope.model_dump(exclude_none=True)}
            await sleep(e.retry_after_s)
        except ClientError as e:
            return {"state": "refused", "error": e.envelope.model_dump(exclude_none=True)}
    text: list[str] = []
    result: dict[str, Any] = {"task_id": admitted.task_id}
    async for event in client.stream(admitted.task_id):
        if event.event == "token":
            text.append(event.data["t"])
        elif event.event == "end":
            result.update(
                state="completed" if event.data["finish_reason"] != "canceled" else "canceled",
                finish_reason=event.data["finish_reason"],
                tokens_out=event.data["tokens_out"],
            )
        elif event.event == "error":
            result.update(state="failed", error=event.data)
    result["output"] = "".join(text)
    return result
