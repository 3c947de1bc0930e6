"""structlog JSON logs: one object per line, with bound task/pool/replica context (the
daemon's and the agent's)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", *, json_logs: bool = True) -> None:
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # aiohttp's access log would cost a line per request on the hot path; errors still show.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
