"""`orchctl keys`: API keys, for admins (the daemon keeps them, hashed, in its key file)."""

from __future__ import annotations

import click

from orchestratord import api_models as api
from orchestratord.client.cli_common import client_of, echo_json, run_async


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (needs an admin key)."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key's work is accounted to.")
@click.option(
    "--role", "roles", multiple=True, required=True,
    type=click.Choice([r.value for r in api.KeyRole]), help="Repeat for several.",
)  # fmt: skip
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None)
@click.option("--max-queued", type=click.IntRange(min=0), default=None)
@click.option("--tokens-per-minute", type=click.IntRange(min=1), default=None)
@click.pass_context
@run_async
async def create(
    ctx: click.Context,
    tenant: str,
    roles: tuple[str, ...],
    max_concurrent: int | None,
    max_queued: int | None,
    tokens_per_minute: int | None,
) -> None:
    """Make a key and print it — once: the daemon keeps only its hash."""
    limits = api.KeyLimits(
        max_concurrent=max_concurrent, max_queued=max_queued, tokens_per_minute=tokens_per_minute
    )
    spec = api.KeyCreate(tenant=tenant, roles=[api.KeyRole(r) for r in roles], limits=limits)
    async with client_of(ctx) as client:
        made = await client.create_key(spec)
    click.echo(f"key {made.id} for tenant {made.tenant} ({', '.join(made.roles)})", err=True)
    click.echo(made.key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@run_async
async def listing(ctx: click.Context, as_json: bool) -> None:
    """The keys (ids, tenants, roles, limits — never the keys)."""
    async with client_of(ctx) as client:
        found = await client.keys()
    if as_json:
        echo_json(found)
        return
    click.echo(f"{'ID':<12}{'TENANT':<20}{'ROLES':<24}LIMITS")
    for k in found:
        limits = ", ".join(f"{n}={v}" for n, v in k.limits.model_dump(exclude_none=True).items())
        click.echo(f"{k.id:<12}{k.tenant:<20}{','.join(k.roles):<24}{limits or '-'}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
@run_async
async def revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke KEY_ID: requests with it are refused at once."""
    async with client_of(ctx) as client:
        await client.revoke_key(key_id)
    click.echo(f"revoked {key_id}")
