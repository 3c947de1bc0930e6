"""`orchestratord` — the daemon's command line: serve, and write the project's own models
for the engines this host runs (`orchctl` is the client's)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import uvloop

from orchestratord.config import ConfigError, load_config
from orchestratord.defaults import default_config
from orchestratord.store import StoreError
from orchestratord.telemetry.logging import configure
from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model


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
def serve(config_path: str | None, port: int | None, log_level: str, pretty_logs: bool) -> None:
    """Serve the API until SIGTERM/SIGINT, then drain gracefully and exit 0."""
    configure(log_level, json_logs=not pretty_logs)
    try:
        config = load_config(config_path) if config_path else default_config()
    except ConfigError as e:
        for line in e.problems:
            click.echo(f"error: {line}", err=True)
        sys.exit(2)
    if port is not None:
        config.server.port = port

    from orchestratord.daemon import Daemon
    from orchestratord.daemon import serve as run

    def ready(daemon: Daemon) -> None:
        url = f"http://{config.server.host}:{daemon.port}"
        model = config.pools[0].model
        assert daemon.service is not None
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
    except StoreError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


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
