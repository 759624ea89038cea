"""The command line's words: exit codes, the one-line usage error, and readers of its arguments.

Light on purpose: `--help` imports this module and nothing of the settings or the database.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from core.clock import parse_as_of, utc_now

if TYPE_CHECKING:
    from core.job import Job
    from jobs.settings import RuleSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3
FUTURE_TOLERANCE_SECONDS = 300  # a run-by-hand's --as-of may be at most this far ahead of now
RUN_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "ABANDONED")


class UsageError(Exception):
    """Bad usage: one line, exit code 2."""


def instant(text: str, option: str) -> datetime:
    try:
        return parse_as_of(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def as_of(args: argparse.Namespace) -> datetime:
    """The command's `--as-of` (default now); with `--allow-future` among its options, refused more
    than a few minutes ahead unless given."""
    now = utc_now()
    if getattr(args, "as_of", None) is None:
        return now
    when = instant(args.as_of, "--as-of")
    if hasattr(args, "allow_future"):
        refuse_future(when, now, allowed=args.allow_future)
    return when


def refuse_future(when: datetime, now: datetime, *, allowed: bool) -> None:
    """A mistyped year (2062 for 2026) would expire every point: refuse unless asked for."""
    if allowed or (when - now).total_seconds() <= FUTURE_TOLERANCE_SECONDS:
        return
    raise UsageError(f"--as-of: {when.isoformat()} is more than {FUTURE_TOLERANCE_SECONDS // 60} minutes "
                     f"after now ({now.replace(microsecond=0).isoformat()}); add --allow-future if you mean it")


def bounded_int(low: int, high: int = 2**63 - 1) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (the database's bigint at most)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}")
        return value

    return parse


def run_id(text: str) -> int:
    """An argparse type: a run's id."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a run id (a number), not {text!r}")
    return int(text)


class JobNames:
    """The job names, read from the registry only when argparse checks or prints them
    (so `--help` does not even read the settings)."""

    def _names(self) -> list[str]:
        from jobs import NAMES  # the registry reads the settings' module: not for `--help`

        return list(NAMES)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())


def job_named(name: str) -> Job[RuleSettings]:
    """The job of a name the parser took (`choices=JobNames()` refuses any other)."""
    from jobs import job_named as registered  # only this job's module loads, for a command that runs it

    return registered(name)
