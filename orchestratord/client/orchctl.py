"""`orchctl` — submit and watch jobs, and operate pools, from the command line.

Built on the client SDK only (no server internals).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from orchestratord import api_models as api
from orchestratord.client import DEFAULT_URL
from orchestratord.client.batch_cli import batch, batches
from orchestratord.client.cli_common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    client_of,
    fail,
    run_async,
)
from orchestratord.client.keys_cli import keys


@click.group(epilog=EXIT_CODES_HELP)
@click.option(
    "--url",
    envvar="ORCH_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Daemon URL (env ORCH_URL); several, comma-separated, for daemons sharing a store: "
    "requests go to the leader.",
)
@click.option(
    "--api-key",
    envvar="ORCH_API_KEY",
    default=None,
    help="Bearer key, when the daemon requires one (env ORCH_API_KEY).",
)
@click.option(
    "--api-key-file",
    envvar="ORCH_API_KEY_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Read the key from this file instead (env ORCH_API_KEY_FILE): keeps it out of "
    "the shell history and the process list.",
)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None, api_key_file: Path | None) -> None:
    """orchctl: talk to an orchestratord daemon."""
    ctx.ensure_object(dict)
    ctx.obj["url"] = url
    ctx.obj["api_key"] = api_key_file.read_text().strip() if api_key_file else api_key


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
    async with client_of(ctx) as client:
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
                fail(EXIT_FAILED, f"{event.data['code']}: {event.data['message']}")


@main.command()
@click.argument("task_id")
@click.pass_context
@run_async
async def status(ctx: click.Context, task_id: str) -> None:
    """Show a task's state (and its output once it has ended)."""
    async with client_of(ctx) as client:
        click.echo((await client.status(task_id)).model_dump_json(indent=2, exclude_none=True))


def _age(ms: int) -> str:
    """kubectl's AGE: the largest unit, whole."""
    seconds = ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@main.command()
@click.option("--pool", "pool_id", default=None, help="Only this pool's tasks.")
@click.option(
    "--state", "states", multiple=True,
    help="queued, running, completed, failed, canceled, evicted, expired, or all "
    "(repeatable; default: queued and running).",
)  # fmt: skip
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=None,
    help="At most this many, the oldest (default 100).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def tasks(
    ctx: click.Context, pool_id: str | None, states: tuple[str, ...], limit: int | None,
    as_json: bool,
) -> None:  # fmt: skip
    """List tasks, oldest first: the queued and running ones unless --state says otherwise
    (another tenant's only with an operator or admin key)."""
    async with client_of(ctx) as client:
        found = await client.tasks(pool_id=pool_id, states=states, limit=limit)
    if as_json:
        click.echo(found.model_dump_json(indent=2))
        return
    if not found.tasks:
        click.echo("no tasks found", err=True)
        return
    click.echo(
        f"{'TASK':<38}{'POOL':<14}{'STATE':<11}{'PRIORITY':<13}{'TENANT':<14}{'POSITION':<10}"
        f"{'REPLICA':<14}{'TOKENS':<8}AGE"
    )
    for t in found.tasks:
        position = "-" if t.queue_position is None else str(t.queue_position)
        click.echo(
            f"{t.task_id:<38}{t.pool_id:<14}{t.state.value:<11}{t.priority.value:<13}"
            f"{t.tenant:<14}{position:<10}{t.replica_id or '-':<14}{t.tokens_out:<8}"
            f"{_age(t.age_ms)}"
        )
    if found.truncated:
        click.echo(
            f"(the oldest {len(found.tasks)}; more match: narrow with --pool or --state, "
            "or raise --limit)",
            err=True,
        )


@main.command()
@click.argument("task_id")
@click.pass_context
@run_async
async def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a queued or running task (idempotent: a task that already ended is left as
    it ended, and the output says so)."""
    async with client_of(ctx) as client:
        await client.cancel(task_id)
        # the 204 is the same either way; the state says which it was (a cancel ends the
        # task before it answers)
        state = (await client.status(task_id)).state
    if state is api.TaskState.CANCELED:
        click.echo(f"canceled {task_id}")
    else:
        click.echo(f"{task_id} had already ended ({state.value}): nothing to cancel")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def pools(ctx: click.Context, as_json: bool) -> None:
    """List pools and their replicas."""
    async with client_of(ctx) as client:
        found = await client.pools()
    if as_json:
        click.echo(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return
    click.echo(f"{'POOL':<14}{'ENGINE':<10}{'MODEL':<20}{'READY':<7}{'QUEUE':<10}REPLICAS")
    for p in found:
        depth = sum(p.queue_depth.values())
        reps = ", ".join(
            f"{r.replica_id}({r.state} {r.slots_free}/{r.slots_total}"
            f"{f' on {r.host}' if r.host else ''})"
            for r in p.replicas
        )
        state = "drain" if p.draining else ("yes" if p.ready else "no")
        click.echo(
            f"{p.pool_id:<14}{p.engine:<10}{p.model:<20}{state:<7}"
            f"{depth}/{p.queue_capacity:<8}{reps}"
        )
        if p.last_error:
            click.echo(f"  last error: {p.last_error}")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agents(ctx: click.Context, as_json: bool) -> None:
    """List pool-managerd agents: connected or lost, their replicas, GPUs and last command
    (`orchctl agents stop AGENT` stops an agent's engines)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_agents, as_json=as_json)


@agents.command("stop")
@click.argument("agent_id")
@click.pass_context
@run_async
async def stop_agent(ctx: click.Context, agent_id: str) -> None:
    """Stop AGENT's engines (before maintenance); it stays joined and reports them stopped."""
    async with client_of(ctx) as client:
        await client.stop_agent(agent_id)
    click.echo(f"stopping the engines of {agent_id}; see `orchctl agents` for the result")


@click.pass_context
@run_async
async def list_agents(ctx: click.Context, as_json: bool) -> None:
    async with client_of(ctx) as client:
        found = await client.agents()
    if as_json:
        click.echo(json.dumps([a.model_dump(mode="json") for a in found], indent=2))
        return
    click.echo(
        f"{'AGENT':<16}{'HOST':<20}{'STATE':<11}{'SEEN':<8}{'POOLS':<16}{'REPLICAS':<20}GPUS"
    )
    for a in found:
        state = "connected" if a.connected else "lost"
        replicas = " ".join(f"{k}={v}" for k, v in sorted(a.replicas.items())) or "-"
        gpus = (
            ", ".join(
                f"{g.name} {g.memory_used_bytes / 2**30:.1f}/{g.memory_total_bytes / 2**30:.0f}GiB "
                f"{g.utilization_percent}%"
                for g in a.gpus
            )
            or "-"
        )
        click.echo(
            f"{a.agent_id:<16}{a.host:<20}{state:<11}{a.last_seen_s:<8.1f}"
            f"{','.join(a.pools):<16}{replicas:<20}{gpus}"
        )
        if a.lost_reason:
            click.echo(f"  lost: {a.lost_reason}")
        if a.last_command:
            c = a.last_command
            click.echo(f"  last command: {c.action} {c.pool_id}: {'ok' if c.ok else c.error}")


@main.command()
@click.argument("pool_id")
@click.option("--deadline-ms", type=int, default=30_000, show_default=True)
@click.pass_context
@run_async
async def drain(ctx: click.Context, pool_id: str, deadline_ms: int) -> None:
    """Stop new work on POOL; cancel what still runs after the deadline."""
    async with client_of(ctx) as client:
        await client.drain(pool_id, deadline_ms)
    click.echo(f"draining {pool_id} (deadline {deadline_ms} ms)")


@main.command()
@click.argument("pool_id")
@click.pass_context
@run_async
async def resume(ctx: click.Context, pool_id: str) -> None:
    """Undo a drain: POOL admits and serves again (kubectl's uncordon)."""
    async with client_of(ctx) as client:
        await client.resume(pool_id)
    click.echo(f"resumed {pool_id}")


@main.command()
@click.argument("pool_id")
@click.argument("model")
@click.option("--resume", "and_resume", is_flag=True, help="Also resume a drained pool.")
@click.pass_context
@run_async
async def reload(ctx: click.Context, pool_id: str, model: str, and_resume: bool) -> None:
    """Swap POOL to MODEL — a model name the daemon's config gives the pool — atomically
    (rolled back if the new replicas fail). A drained pool stays drained unless --resume."""
    async with client_of(ctx) as client:
        await client.reload(pool_id, model, resume=and_resume)
    click.echo(f"reloading {pool_id} to {model}; see `orchctl pools` for progress")


@main.command()
@click.pass_context
@run_async
async def capabilities(ctx: click.Context) -> None:
    """Show the engines the daemon serves."""
    async with client_of(ctx) as client:
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
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JUnit XML report here (a test case per prompt x seed x replica pair).",
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
    junit: Path | None,
) -> None:
    """Run the determinism suite against POOL: every prompt of the corpus x SEEDS seeds in
    strict mode on each replica, compared byte for byte. Exits 4 on any mismatch, naming
    the first diverging case and token."""
    from orchestratord.client.determinism import junit_xml, run_suite

    earlier = json.loads(await asyncio.to_thread(compare.read_text)) if compare else None
    async with client_of(ctx) as client:
        try:
            proof = await run_suite(
                client, pool_id, seeds=seeds, max_tokens=max_tokens, compare=earlier
            )
        except RuntimeError as e:
            fail(EXIT_FAILED, str(e))
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(proof.to_json(), indent=2) + "\n")
    if junit is not None:
        await asyncio.to_thread(junit.write_text, junit_xml(proof))
    cases = len(proof.cases)
    if proof.divergence is not None:
        fail(EXIT_FAILED, f"determinism FAILED on {pool_id}: {proof.divergence.describe()}")
    click.echo(
        f"determinism ok: {cases} cases x {len(proof.replicas)} replicas identical "
        f"({proof.engine} {proof.engine_version}, {proof.model_digest[:19]})"
    )


main.add_command(batch)
main.add_command(batches)
main.add_command(keys)
