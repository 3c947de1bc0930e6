"""structlog JSON logs: one object per line, with bound task/pool/replica context (the
daemon's and the agent's)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import structlog


def configure(level: str = "info", *, json_logs: bool = True) -> None:
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if json_logs:
        # a line per task: orjson renders it to bytes, written as they are (structlog's
        # fast path; stdlib json and a text round trip were ~6 % of the daemon's CPU)
        dumps = partial(orjson.dumps, option=orjson.OPT_NON_STR_KEYS)
        processors.append(structlog.processors.JSONRenderer(serializer=dumps))
        factory: Callable[..., Any] = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        processors.append(structlog.dev.ConsoleRenderer())
        factory = structlog.PrintLoggerFactory(sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp's access log would cost a line per request on the hot path; errors still show.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
