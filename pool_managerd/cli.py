"""`pool-managerd serve`: the agent on an engine host (see pool_managerd.agent)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click
import uvloop

from pool_managerd import yaml_config
from pool_managerd.agent import Agent, ControlPlane
from pool_managerd.logs import configure
from pool_managerd.node_config import NodeConfig


@click.group()
def main() -> None:
    """pool-managerd: runs inference engines on this host for orchestratord."""


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


@main.command()
@click.option("--config", "config_path", required=True, help="The node config (YAML).")
@click.option(
    "--join", "addresses", multiple=True, required=True,
    help="A control plane's agent address, grpc://host:port or grpcs://host:port (TLS); "
    "repeat for several (tried in turn).",
)  # fmt: skip
@click.option("--token-file", required=True, help="File holding the join token.")
@click.option("--tls-ca", help="CA certificate that signed the control plane's (grpcs).")
@click.option("--tls-cert", help="This agent's client certificate (when required).")
@click.option("--tls-key", help="This agent's client key.")
@click.option("--log-level", default="info", show_default=True)
def serve(
    config_path: str,
    addresses: tuple[str, ...],
    token_file: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    log_level: str,
) -> None:
    """Run the node's engines and join the control plane until SIGTERM/SIGINT; then stop
    the engines and exit 0."""
    configure(log_level)
    try:
        node = yaml_config.load(NodeConfig, config_path)
        token = Path(token_file).read_text().strip()
        control = ControlPlane(
            addresses, token, ca=_read(tls_ca), cert=_read(tls_cert), key=_read(tls_key)
        )
    except (yaml_config.ConfigError, OSError, ValueError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    if not token:
        click.echo(f"error: {token_file} is empty", err=True)
        sys.exit(2)
    uvloop.run(_run(Agent(node, control)))


async def _run(agent: Agent) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.run(stop)
