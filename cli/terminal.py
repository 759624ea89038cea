"""The two consoles of the command line: stdout for results, stderr for progress and logs.

On a terminal rich measures its width; piped into a file or `grep`, output has no colour and lines
are at most `COLUMNS` (default 160) wide, so a table stays one line per row there too.
"""
from __future__ import annotations

import os
import sys
from typing import TextIO

from rich.console import Console

PIPED_WIDTH = 160


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
