"""structlog set-up: JSON lines when not on a TTY, readable console output on a TTY.

Call ``configure_logging`` once per process; bind agent/gpu/model with
``structlog.contextvars.bind_contextvars`` or ``log.bind``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(
    level: str = "info", json: bool | None = None, file: TextIO | None = None
) -> None:
    """Configure structlog and stdlib logging for this process (idempotent).

    ``file``: write log lines there (JSON unless told otherwise) instead of stderr.
    """
    global _FILE
    _FILE = file
    use_json = (file is not None or not sys.stderr.isatty()) if json is None else json
    lvl = logging.getLevelName(level.upper())
    if not isinstance(lvl, int):
        raise ValueError(f"log level: unknown level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), handlers=[_StderrHandler()], force=True)


_FILE: TextIO | None = None


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Resolve sys.stderr at each use so that redirection (tests, daemons) is honoured.
    return structlog.PrintLogger(file=_FILE if _FILE is not None else sys.stderr)


class _StderrHandler(logging.StreamHandler):
    """A stdlib handler that always writes to the current ``sys.stderr``."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
