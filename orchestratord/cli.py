"""`orchestratord` — the daemon's command line: serve, and write the project's own models
for the engines this host runs (`orchctl` is the client's)."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import click
import structlog
import uvloop
from pydantic import ValidationError

from orchestratord.api.access import is_loopback
from orchestratord.api_models import KeyCreate, KeyLimits, KeyRole
from orchestratord.config import ConfigError, load_config
from orchestratord.defaults import default_config
from orchestratord.keyring import KeyFileError, make_entry, read_entries, write_entries
from orchestratord.store import StoreError
from orchestratord.store.postgres import redacted
from pool_managerd.logs import configure
from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model

log = structlog.get_logger("orchestratord")


@click.group()
def main() -> None:
    """orchestratord: a queue-centric inference orchestrator."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML config (default: the embedded tiny pool).",
)
@click.option("--port", type=int, default=None, help="Override server.port.")
@click.option("--log-level", default="info", show_default=True)
@click.option("--pretty-logs", is_flag=True, help="Human-readable logs instead of JSON.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve a non-loopback address without API keys (anyone who can reach it may do "
    "anything). Warns at every start.",
)
def serve(
    config_path: str | None, port: int | None, log_level: str, pretty_logs: bool, insecure: bool
) -> None:
    """Serve the API until SIGTERM/SIGINT, then drain gracefully and exit 0. SIGHUP re-reads
    the key file."""
    configure(log_level, json_logs=not pretty_logs)
    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigError as e:
        for line in e.problems:
            click.echo(f"error: {line}", err=True)
        sys.exit(2)
    if port is not None:
        config.server.port = port
    server = config.server
    if not (server.keys_file or server.api_key_env or is_loopback(server.host)):
        if not insecure:
            click.echo(
                f"error: refusing to serve {server.host} without API keys: set "
                "server.keys_file (make one with `orchestratord keys create`), bind to "
                "127.0.0.1, or pass --insecure",
                err=True,
            )
            sys.exit(2)
        log.warning("serving without API keys on a non-loopback address (--insecure): "
                    "anyone who can reach it may submit, cancel, drain and reload",
                    host=server.host)  # fmt: skip

    from orchestratord.daemon import Daemon
    from orchestratord.daemon import serve as run

    def ready(daemon: Daemon) -> None:
        url = daemon.url
        model = config.pools[0].model
        if daemon.service is None:  # a shared store: leadership is elected after this
            where = f"{redacted(config.store.url)} (shared: one daemon leads, others stand by)"
        else:
            where = daemon.service.store.location or "memory: (accepted work dies with the process)"
        click.echo(
            f"orchestratord serving on {url}\n"
            f"  task store: {where}\n"
            f"  try: orchctl --url {url} submit --model {model} 'hello'\n"
            f"       curl -N {url}/v1/pools",
            err=True,
        )

    try:
        uvloop.run(run(config, ready))
    except (StoreError, KeyFileError, RuntimeError, ssl.SSLError, OSError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


@main.group()
def keys() -> None:
    """API keys in a key file (`server.keys_file`); a running daemon re-reads it on SIGHUP.
    With the daemon up, admins can also use `orchctl keys`."""


@keys.command("create")
@click.option("--file", "path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tenant", required=True, help="The tenant the key's work is accounted to.")
@click.option(
    "--role", "roles", multiple=True, required=True,
    type=click.Choice([r.value for r in KeyRole]), help="Repeat for several.",
)  # fmt: skip
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None)
@click.option("--max-queued", type=click.IntRange(min=0), default=None)
@click.option("--tokens-per-minute", type=click.IntRange(min=1), default=None)
def create_key(
    path: Path,
    tenant: str,
    roles: tuple[str, ...],
    max_concurrent: int | None,
    max_queued: int | None,
    tokens_per_minute: int | None,
) -> None:
    """Add a key to a key file (made if missing) and print the key — once: only its hash is
    kept."""
    try:
        spec = KeyCreate(
            tenant=tenant, roles=[KeyRole(r) for r in roles],
            limits=KeyLimits(max_concurrent=max_concurrent, max_queued=max_queued,
                             tokens_per_minute=tokens_per_minute),
        )  # fmt: skip
        entry, key = make_entry(spec)
        write_entries(path, [*read_entries(path), entry])
    except (ValidationError, KeyFileError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"key {entry.id} for tenant {tenant} ({', '.join(roles)}) added to {path}",
               err=True)  # fmt: skip
    click.echo(key)


@main.group()
def models() -> None:
    """Model files the project writes itself (no model hub needed)."""


@models.command("make-tiny")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--slow", is_flag=True, help="The larger (~68 MB, ~150 tokens/s) variant.")
def make_tiny(path: Path, seed: int, slow: bool) -> None:
    """Write a tiny llama-architecture GGUF with seeded random weights to PATH
    (same seed, byte-identical file; nothing is downloaded)."""
    spec = TinyModelSpec.slow(seed) if slow else TinyModelSpec(seed=seed)
    written = write_tiny_model(path, spec)
    click.echo(f"wrote {written} ({written.stat().st_size:,} bytes, seed {seed})")
