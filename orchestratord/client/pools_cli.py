"""`orchctl`'s operator verbs: pools, agents and engines (list, drain, resume, reload)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import click

from orchestratord import api_models as api
from orchestratord.client.cli_common import EXIT_FAILED, client_of, echo_json, fail, run_async
from orchestratord.client.sdk import OrchClient


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def pools(ctx: click.Context, as_json: bool) -> None:
    """List pools and their replicas."""
    async with client_of(ctx) as client:
        found = await client.pools()
    if as_json:
        echo_json(found)
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
        if p.reload is not None and p.reload.state == "reloading":
            click.echo(f"  reloading to {p.reload.model}")
        if p.last_error:
            click.echo(f"  last error: {p.last_error}")


@click.group(invoke_without_command=True)
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
        echo_json(found)
        return
    if not found:
        click.echo("no agents have joined", err=True)
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


#: `--wait`: how often the pool is looked at again, and for how long by default.
POLL_S = 0.5
WAIT_S = 600.0
_wait = click.option(
    "--wait", is_flag=True, help="Return once it is done (kubectl's `rollout status`)."
)
_timeout = click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0), default=WAIT_S, show_default=True,
    help="Seconds --wait waits (the operation itself goes on).",
)  # fmt: skip


async def _until(
    client: OrchClient, pool_id: str, done: Callable[[api.PoolInfo], bool], timeout_s: float,
    doing: str,
) -> api.PoolInfo:  # fmt: skip
    """The pool once `done` holds of it; EXIT_FAILED after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:  # (the daemon is asked again: there is nothing here to wait on)
                pool = await client.pool(pool_id)
                if done(pool):
                    return pool
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        fail(EXIT_FAILED, f"{pool_id} is still {doing} after {timeout_s:g} s (see `orchctl pools`)")


def _drained(pool: api.PoolInfo) -> bool:
    return not any(pool.queue_depth.values()) and all(
        r.slots_free == r.slots_total for r in pool.replicas
    )


@click.command()
@click.argument("pool_id")
@click.option("--deadline-ms", type=int, default=30_000, show_default=True)
@_wait
@_timeout
@click.pass_context
@run_async
async def drain(
    ctx: click.Context, pool_id: str, deadline_ms: int, wait: bool, timeout_s: float
) -> None:
    """Stop new work on POOL; cancel what still runs after the deadline."""
    async with client_of(ctx) as client:
        await client.drain(pool_id, deadline_ms)
        click.echo(f"draining {pool_id} (deadline {deadline_ms} ms)")
        if wait:
            await _until(client, pool_id, _drained, timeout_s, "draining")
            click.echo(f"drained {pool_id}: nothing queued or running")


@click.command()
@click.argument("pool_id")
@click.pass_context
@run_async
async def resume(ctx: click.Context, pool_id: str) -> None:
    """Undo a drain: POOL admits and serves again (kubectl's uncordon)."""
    async with client_of(ctx) as client:
        await client.resume(pool_id)
    click.echo(f"resumed {pool_id}")


@click.command()
@click.argument("pool_id")
@click.argument("model")
@click.option("--resume", "and_resume", is_flag=True, help="Also resume a drained pool.")
@_wait
@_timeout
@click.pass_context
@run_async
async def reload(
    ctx: click.Context, pool_id: str, model: str, and_resume: bool, wait: bool,
    timeout_s: float,
) -> None:  # fmt: skip
    """Swap POOL to MODEL — a model name the daemon's config gives the pool — atomically
    (rolled back if the new replicas fail). A drained pool stays drained unless --resume.
    With --wait, exits 4 when it was rolled back."""
    async with client_of(ctx) as client:
        await client.reload(pool_id, model, resume=and_resume)
        if not wait:
            click.echo(f"reloading {pool_id} to {model}; see `orchctl pools` for progress")
            return
        click.echo(f"reloading {pool_id} to {model}")
        pool = await _until(
            client, pool_id, lambda p: p.reload is None or p.reload.state != "reloading",
            timeout_s, "reloading",
        )  # fmt: skip
    if pool.reload is None:  # a daemon from before reloads were reported
        fail(EXIT_FAILED, "this daemon does not say how a reload ends; see `orchctl pools`")
    if pool.reload.state == "failed":
        fail(EXIT_FAILED, f"reload of {pool_id} to {model} failed: {pool.reload.error}")
    click.echo(f"reloaded {pool_id} to {model}")


@click.command()
@click.pass_context
@run_async
async def capabilities(ctx: click.Context) -> None:
    """Show the engines the daemon serves."""
    async with client_of(ctx) as client:
        caps: api.CapabilitiesResponse = await client.capabilities()
    click.echo(caps.model_dump_json(indent=2))
