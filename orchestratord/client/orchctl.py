"""`orchctl` — submit and watch jobs, and operate pools, from the command line: the task
verbs here, the operator verbs in `pools_cli`, batches in `batch_cli`, keys in `keys_cli`,
the determinism suite in `determinism`.

Built on the client SDK only (no server internals).
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import aclosing
from pathlib import Path
from typing import Any

import click

from orchestratord import api_models as api
from orchestratord.client import DEFAULT_URL
from orchestratord.client.batch_cli import batch, batches
from orchestratord.client.cli_common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_USAGE,
    client_of,
    fail,
    run_async,
)
from orchestratord.client.determinism import determinism
from orchestratord.client.keys_cli import keys
from orchestratord.client.pools_cli import agents, capabilities, drain, pools, reload, resume
from orchestratord.client.sdk import Backpressure, ClientError, Event, OrchClient


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
@click.option("--temperature", type=float)
@click.option("--top-p", type=float)
@click.option("--top-k", type=int)
@click.option("--stop", multiple=True, help="A stop sequence (repeatable).")
@click.option("--session", help="Session id (replica affinity).")
@click.option(
    "--determinism",
    type=click.Choice(["best_effort", "strict"]),
    default="best_effort",
    show_default=True,
)
@click.option("--deadline-ms", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print raw events as JSON lines.")
@click.option(
    "--detach", "-d", is_flag=True,
    help="Print the task id once admitted and return (follow it later with `attach`).",
)  # fmt: skip
@click.pass_context
@run_async
async def submit(
    ctx: click.Context,
    prompt: str,
    model: str,
    priority: str,
    seed: int | None,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    stop: tuple[str, ...],
    session: str | None,
    determinism: str,
    deadline_ms: int | None,
    as_json: bool,
    detach: bool,
) -> None:
    """Submit PROMPT (`-`: read it from stdin) and print tokens as they arrive.
    Interrupted (Ctrl-C), the task goes on: `orchctl attach` picks its output up again,
    `orchctl cancel` ends it."""
    if prompt == "-":
        prompt = sys.stdin.read()
    optional = {"seed": seed, "session_id": session, "deadline_ms": deadline_ms}
    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "stop": list(stop)}
    sampling = {k: v for k, v in given.items() if v is not None and v != []}
    body: dict[str, Any] = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "priority": priority,
        "determinism": determinism, **{k: v for k, v in optional.items() if v is not None},
        **({"sampling": sampling} if sampling else {}),
    }  # fmt: skip
    async with client_of(ctx) as client:
        admitted = await client.submit(body)
        if as_json:
            click.echo(json.dumps({"event": "admitted", "data": admitted.model_dump()}))
        elif detach:
            click.echo(admitted.task_id)
        if not detach:
            await _follow(client, admitted.task_id, as_json)


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print raw events as JSON lines.")
@click.pass_context
@run_async
async def attach(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Print a task's output from its first token and follow it to its end — a task
    submitted with --detach, by another client, or left by an interrupted `submit`
    (while the daemon keeps its events: `retention_s` after it ends). Of a long stream
    the daemon keeps the latest events only; attach then starts at the oldest, and says
    so."""
    async with client_of(ctx) as client:
        await _follow(client, task_id, as_json)


async def _follow(client: OrchClient, task_id: str, as_json: bool) -> None:
    """Print a task's events until it ends: its tokens (or, `as_json`, every event as a
    JSON line), a summary on stderr; exit 4 if it failed. Events the daemon no longer
    holds (a long stream's first ones, or those this reader fell behind on) are skipped,
    and stderr says so."""
    after: int | None = None
    try:
        while (after := await _print_events(client, task_id, as_json, after)) is not None:
            click.echo(f"[events before {after + 1} are no longer kept: from there on]", err=True)
    except asyncio.CancelledError:  # Ctrl-C: the reader stops, not the task
        click.echo(
            f"\n[task {task_id} goes on: `orchctl attach {task_id}` follows it again, "
            f"`orchctl cancel {task_id}` ends it]",
            err=True,
        )
        raise


async def _print_events(
    client: OrchClient, task_id: str, as_json: bool, after: int | None
) -> int | None:
    """Print the events after `after` until the task ends (None), or until the daemon
    says the next ones are gone: then the event to read on after."""
    try:
        async with aclosing(client.stream(task_id, after)) as events:
            async for event in events:
                if event.event == "error":
                    gap = _read_on_after(event.data["code"], event.data.get("first_retained"))
                    if gap is not None:  # (about this reader, not the task: not its event)
                        return gap
                _print_event(event, task_id, as_json)
    except ClientError as e:
        if (gap := _read_on_after(e.code, e.envelope.first_retained)) is None:
            raise
        return gap
    return None


def _print_event(event: Event, task_id: str, as_json: bool) -> None:
    """One of a task's events as `submit` and `attach` print it; an error exits 4."""
    if as_json:
        click.echo(json.dumps({"event": event.event, "id": event.id, "data": event.data}))
    elif event.event == "token":
        click.echo(event.data["t"], nl=False)
        sys.stdout.flush()
    elif event.event == "end":
        click.echo()
        click.echo(
            f"[{event.data['finish_reason']}: {event.data['tokens_out']} tokens, "
            f"{event.data['decode_ms']} ms, task {task_id}]",
            err=True,
        )
    if event.event == "error":  # (printed above as JSON, or ending the token line here)
        if not as_json:
            click.echo()
        fail(EXIT_FAILED, f"{event.data['code']}: {event.data['message']}")


def _read_on_after(code: str | None, first_retained: int | None) -> int | None:
    """For a `STREAM_GAP`: the event a reader reads on after (one below the oldest kept)."""
    if code != "STREAM_GAP" or first_retained is None:
        return None
    return first_retained - 1


@main.command()
@click.argument("task_id")
@click.pass_context
@run_async
async def status(ctx: click.Context, task_id: str) -> None:
    """Show a task's state (and its output once it has ended)."""
    async with client_of(ctx) as client:
        click.echo((await client.status(task_id)).model_dump_json(indent=2, exclude_none=True))


#: The most tasks one `cancel` by selection ends (the listing's largest page).
MAX_SELECTED = 1000


def _age(ms: int) -> str:
    """kubectl's AGE: the largest unit, whole."""
    seconds = ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_pool = click.option("--pool", "pool_id", default=None, help="Only this pool's tasks.")
_tenant = click.option("--tenant", default=None, help="Only this tenant's tasks.")


@main.command()
@_pool
@_tenant
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
    ctx: click.Context, pool_id: str | None, tenant: str | None, states: tuple[str, ...],
    limit: int | None, as_json: bool,
) -> None:  # fmt: skip
    """List tasks, oldest first: the queued and running ones unless --state says otherwise
    (another tenant's only with an operator or admin key)."""
    async with client_of(ctx) as client:
        found = await client.tasks(pool_id=pool_id, tenant=tenant, states=states, limit=limit)
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
            f"(the oldest {len(found.tasks)}; more match: narrow with --pool, --tenant or --state, "
            "or raise --limit)",
            err=True,
        )


@main.command()
@click.argument("task_ids", nargs=-1)
@_pool
@_tenant
@click.option(
    "--state", "states", multiple=True, type=click.Choice(["queued", "running"]),
    help="With --pool, --tenant or --all: only tasks in this state (repeatable; default both).",
)  # fmt: skip
@click.option("--all", "every", is_flag=True, help="Every queued and running task.")
@click.pass_context
@run_async
async def cancel(
    ctx: click.Context, task_ids: tuple[str, ...], pool_id: str | None, tenant: str | None,
    states: tuple[str, ...], every: bool,
) -> None:  # fmt: skip
    """Cancel tasks by id, or every live task --pool, --tenant (and --state) select, or
    --all of them (idempotent).

    A task that already ended is left as it ended, and the output says so."""
    selecting = every or pool_id is not None or tenant is not None
    if bool(task_ids) == selecting or (states and not selecting):
        fail(EXIT_USAGE, "name task ids, or select with --pool, --tenant or --all (and --state)")
    async with client_of(ctx) as client:
        truncated = False
        if selecting:
            found = await client.tasks(
                pool_id=pool_id, tenant=tenant, states=states, limit=MAX_SELECTED
            )
            task_ids, truncated = tuple(t.task_id for t in found.tasks), found.truncated
        refused = 0
        for task_id in task_ids:
            try:
                await client.cancel(task_id)
                # the 204 is the same either way; the state says which it was (a cancel
                # ends the task before it answers)
                state = (await client.status(task_id)).state
            except ClientError as e:  # this one (unknown, another tenant's): on to the rest
                if isinstance(e, Backpressure):
                    raise
                click.echo(f"error: {task_id}: {e}", err=True)
                refused += 1
                continue
            if state is api.TaskState.CANCELED:
                click.echo(f"canceled {task_id}")
            else:
                click.echo(f"{task_id} had already ended ({state.value}): nothing to cancel")
    if selecting and not task_ids:
        click.echo("no tasks matched", err=True)
    if truncated:
        click.echo(f"(the oldest {MAX_SELECTED}; more matched: run it again)", err=True)
    if refused:
        fail(EXIT_FAILED, f"{refused} of {len(task_ids)} could not be canceled")


main.add_command(batch)
main.add_command(determinism)
main.add_command(batches)
main.add_command(keys)
main.add_command(pools)
main.add_command(agents)
main.add_command(drain)
main.add_command(resume)
main.add_command(reload)
main.add_command(capabilities)
