"""What every `orchctl` command shares: exit codes, error mapping, the client."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from pydantic import BaseModel

from orchestratord.client.sdk import Backpressure, ClientError, DaemonUnreachable, OrchClient

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


def echo_json(found: Sequence[BaseModel]) -> None:
    """A listing's `--json`: its objects as one indented JSON array."""
    click.echo(json.dumps([m.model_dump(mode="json") for m in found], indent=2))


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command and map client errors to the documented exit codes."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return asyncio.run(fn(*args, **kwargs))
        except DaemonUnreachable as e:
            fail(EXIT_UNREACHABLE, str(e))
        except Backpressure as e:
            fail(EXIT_REJECTED, f"{e} (retry after {e.retry_after_s:g}s)")
        except ClientError as e:
            field = f" [field: {e.envelope.field}]" if e.envelope.field else ""
            fail(EXIT_FAILED, f"{e}{field}")

    return wrapper


def client_of(ctx: click.Context) -> OrchClient:
    return OrchClient(ctx.obj["url"], api_key=ctx.obj["api_key"])
