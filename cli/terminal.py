"""The two consoles of the command line: stdout for results, stderr for progress and logs.

On a terminal rich measures its width; piped into a file or `grep`, output has no colour and lines
are at most `COLUMNS` (default 80) wide, as on a terminal that wide. `--json` documents go through
`print_json`: one document, stable (sorted) keys, instants in ISO-8601.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, TextIO

from rich.console import Console

PIPED_WIDTH = 80


def _console(stream: TextIO) -> Console:
    interactive = stream.isatty()
    width = None if interactive else _piped_width()
    return Console(file=stream, width=width, highlight=False, soft_wrap=False,
                   color_system="auto" if interactive else None)


def _piped_width() -> int:
    try:
        return max(40, int(os.environ.get("COLUMNS", PIPED_WIDTH)))
    except ValueError:
        return PIPED_WIDTH


def stdout_console() -> Console:
    """A console on the current stdout (looked up at each call: tests and rich's Live replace it)."""
    return _console(sys.stdout)


def stderr_console() -> Console:
    return _console(sys.stderr)


def interactive() -> bool:
    """A person is watching: stderr is a terminal."""
    return sys.stderr.isatty()


def _json_value(value: Any) -> Any:
    if isinstance(value, date):  # a datetime too
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)  # UUIDs, paths


def print_json(document: Any) -> None:
    """A listing's `--json`: one JSON document on stdout, keys sorted so that they read the same each time."""
    print(json.dumps(document, default=_json_value, sort_keys=True), flush=True)
