"""`orchctl` — submit and watch jobs, and operate pools, from the command line.

Built on the client SDK only (no server internals).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestratord import api_models as api
from orchestratord.client import (
    DEFAULT_URL,
    Backpressure,
    ClientError,
    DaemonUnreachable,
    OrchClient,
)

EXIT_OK, EXIT_USAGE, EXIT_REJECTED, EXIT_FAILED, EXIT_UNREACHABLE = 0, 2, 3, 4, 5

EXIT_CODES_HELP = """\b
Exit codes:
  0  ok
  2  usage error
  3  rejected: backpressure (429) or pool unavailable (503)
  4  the task failed, or the request was refused (4xx)
  5  the daemon is unreachable
"""

T = TypeVar("T")


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command and map client errors to the documented exit codes."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except DaemonUnreachable as e:
            _fail(EXIT_UNREACHABLE, str(e))
        except Backpressure as e:
            _fail(EXIT_REJECTED, f"{e} (retry after {e.retry_after_s:g}s)")
        except ClientError as e:
            field = f" [field: {e.envelope.field}]" if e.envelope.field else ""
            _fail(EXIT_FAILED, f"{e}{field}")

    return wrapper


def _client(ctx: click.Context) -> OrchClient:
    return OrchClient(ctx.obj["url"], api_key=ctx.obj["api_key"])


@click.group(epilog=EXIT_CODES_HELP)
@click.option(
    "--url",
    envvar="ORCH_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Daemon URL (env ORCH_URL).",
)
@click.option(
    "--api-key",
    envvar="ORCH_API_KEY",
    default=None,
    help="Bearer key, when the daemon requires one (env ORCH_API_KEY).",
)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """orchctl: talk to an orchestratord daemon."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url
    ctx.obj["api_key"] = api_key


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("prompt")
@click.option("--model", required=True, help="Model ref a pool serves.")
@click.option(
    "--priority",
    type=click.Choice(["interactive", "batch"]),
    default="interactive",
    show_default=True,
)
@click.option("--seed", type=int)
@click.option("--max-tokens", type=int, default=128, show_default=True)
@click.option("--session", help="Session id (replica affinity).")
@click.option(
    "--determinism",
    type=click.Choice(["best_effort", "strict"]),
    default="best_effort",
    show_default=True,
)
@click.option("--deadline-ms", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print raw events as JSON lines.")
@click.pass_context
@run_async
async def submit(
    ctx: click.Context,
    prompt: str,
    model: str,
    priority: str,
    seed: int | None,
    max_tokens: int,
    session: str | None,
    determinism: str,
    deadline_ms: int | None,
    as_json: bool,
) -> None:
    """Submit PROMPT and print tokens as they arrive."""
    optional = {"seed": seed, "session_id": session, "deadline_ms": deadline_ms}
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "priority": priority,
        "determinism": determinism, **{k: v for k, v in optional.items() if v is not None},
    }  # fmt: skip
    async with _client(ctx) as client:
        admitted = await client.submit(body)
        if as_json:
            click.echo(json.dumps({"event": "admitted", "data": admitted.model_dump()}))
        async for event in client.stream(admitted.task_id):
            if as_json:
                click.echo(json.dumps({"event": event.event, "id": event.id, "data": event.data}))
            elif event.event == "token":
                click.echo(event.data["t"], nl=False)
                sys.stdout.flush()
            elif event.event == "end":
                click.echo()
                click.echo(
                    f"[{event.data['finish_reason']}: {event.data['tokens_out']} tokens, "
                    f"{event.data['decode_ms']} ms, task {admitted.task_id}]",
                    err=True,
                )
            elif event.event == "error":
                if not as_json:
                    click.echo()
                _fail(EXIT_FAILED, f"{event.data['code']}: {event.data['message']}")


@main.command()
@click.argument("task_id")
@click.pass_context
@run_async
async def status(ctx: click.Context, task_id: str) -> None:
    """Show a task's state (and its output once it has ended)."""
    async with _client(ctx) as client:
        click.echo((await client.status(task_id)).model_dump_json(indent=2, exclude_none=True))


@main.command()
@click.argument("task_id")
@click.pass_context
@run_async
async def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a queued or running task (idempotent)."""
    async with _client(ctx) as client:
        await client.cancel(task_id)
    click.echo(f"canceled {task_id}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def pools(ctx: click.Context, as_json: bool) -> None:
    """List pools and their replicas."""
    async with _client(ctx) as client:
        found = await client.pools()
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return
    click.echo(f"{'POOL':<14}{'ENGINE':<10}{'MODEL':<20}{'READY':<7}{'QUEUE':<10}REPLICAS")
    for p in found:
        depth = sum(p.queue_depth.values())
        reps = ", ".join(
            f"{r.replica_id}({r.state} {r.slots_free}/{r.slots_total})" for r in p.replicas
        )
        state = "drain" if p.draining else ("yes" if p.ready else "no")
        click.echo(
            f"{p.pool_id:<14}{p.engine:<10}{p.model:<20}{state:<7}"
            f"{depth}/{p.queue_capacity:<8}{reps}"
        )
        if p.last_error:
            click.echo(f"  last error: {p.last_error}")


@main.command()
@click.argument("pool_id")
@click.option("--deadline-ms", type=int, default=30_000, show_default=True)
@click.pass_context
@run_async
async def drain(ctx: click.Context, pool_id: str, deadline_ms: int) -> None:
    """Stop new work on POOL; cancel what still runs after the deadline."""
    async with _client(ctx) as client:
        await client.drain(pool_id, deadline_ms)
    click.echo(f"draining {pool_id} (deadline {deadline_ms} ms)")


@main.command()
@click.argument("pool_id")
@click.argument("model")
@click.pass_context
@run_async
async def reload(ctx: click.Context, pool_id: str, model: str) -> None:
    """Swap POOL to MODEL atomically (rolled back if the new replicas fail)."""
    async with _client(ctx) as client:
        await client.reload(pool_id, model)
    click.echo(f"reloading {pool_id} to {model}; see `orchctl pools` for progress")


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


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("jobs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write one JSON result per job.",
)
@click.option("--model", help="Model for jobs that do not name one.")
@click.option("--concurrency", type=click.IntRange(1, 1024), default=8, show_default=True)
@click.option(
    "--max-attempts",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Submissions per job when the daemon pushes back (429/503).",
)
@click.option("--no-progress", is_flag=True)
@click.pass_context
@run_async
async def batch(
    ctx: click.Context,
    jobs: Path,
    out: Path,
    model: str | None,
    concurrency: int,
    max_attempts: int,
    no_progress: bool,
) -> None:
    """Run every job in JOBS (JSON lines of task requests) with bounded concurrency,
    honouring Retry-After, and write results as JSON lines in input order."""
    from tqdm import tqdm

    bodies: list[dict[str, Any]] = []
    lines = await asyncio.to_thread(jobs.read_text)
    for n, line in enumerate(lines.splitlines(), 1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            raise click.UsageError(f"{jobs}:{n}: not a JSON object: {e}") from None
        if "model" not in body:
            if model is None:
                raise click.UsageError(f"{jobs}:{n}: no model (give --model)")
            body["model"] = model
        bodies.append(body)
    results: list[dict[str, Any] | None] = [None] * len(bodies)
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(bodies), unit="job", disable=no_progress, file=sys.stderr)
    async with _client(ctx) as client:

        async def one(i: int) -> None:
            async with gate:
                result = await _run_one(client, bodies[i], max_attempts, asyncio.sleep)
            results[i] = {"line": i + 1, **result}
            bar.update(1)

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    bar.close()
    with out.open("w") as f:
        for result in results:
            f.write(json.dumps(result) + "\n")
    counts = Counter(r["state"] for r in results if r is not None)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    click.echo(f"{len(bodies)} jobs: {summary}; results in {out}", err=True)
    if counts.get("rejected"):
        sys.exit(EXIT_REJECTED)
    if set(counts) - {"completed"}:
        sys.exit(EXIT_FAILED)


@main.command()
@click.pass_context
@run_async
async def capabilities(ctx: click.Context) -> None:
    """Show the engines the daemon serves."""
    async with _client(ctx) as client:
        caps: api.CapabilitiesResponse = await client.capabilities()
    click.echo(caps.model_dump_json(indent=2))


@main.command(epilog=EXIT_CODES_HELP)
@click.option("--pool", "pool_id", required=True, help="A strict pool with >= 2 replicas.")
@click.option("--seeds", type=click.IntRange(1), default=64, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proof file (JSON) here.",
)
@click.option(
    "--compare",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also require the same streams as this earlier proof (e.g. before a "
    "restart of the replicas).",
)
@click.pass_context
@run_async
async def determinism(
    ctx: click.Context,
    pool_id: str,
    seeds: int,
    max_tokens: int,
    out: Path | None,
    compare: Path | None,
) -> None:
    """Run the determinism suite against POOL: every prompt of the corpus x SEEDS seeds in
    strict mode on each replica, compared byte for byte. Exits 4 on any mismatch, naming
    the first diverging case and token."""
    from orchestratord.client.determinism import run_suite

    earlier = json.loads(await asyncio.to_thread(compare.read_text)) if compare else None
    async with _client(ctx) as client:
        try:
            proof = await run_suite(
                client, pool_id, seeds=seeds, max_tokens=max_tokens, compare=earlier
            )
        except RuntimeError as e:
            _fail(EXIT_FAILED, str(e))
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(proof.to_json(), indent=2) + "\n")
    cases = len(proof.cases)
    if proof.divergence is not None:
        _fail(EXIT_FAILED, f"determinism FAILED on {pool_id}: {proof.divergence.describe()}")
    click.echo(
        f"determinism ok: {cases} cases x {len(proof.replicas)} replicas identical "
        f"({proof.engine} {proof.engine_version}, {proof.model_digest[:19]})"
    )
