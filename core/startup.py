"""Checks made at start, before any run: each refuses (ConfigError, exit 2) with one line.

- The host's clock against the database's: a replica whose clock is off would run its ticks with a
  wrong as-of instant. `SELECT clock_timestamp()` is bracketed by two host readings; the skew is the
  database reading against their midpoint, and only the part beyond the bracket's half-width counts.
- The reports folder, for the commands and the daemon that write reports: it must be a folder this
  process can create a file in (tried for real: permission bits say nothing to root or a read-only mount).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy import Engine

from core.clock import utc_now
from core.settings import ConfigError
from core.sql import Queries

_queries = Queries(__file__)


@dataclass(frozen=True)
class ClockReading:
    host: datetime
    database: datetime
    uncertainty_seconds: float

    @property
    def skew_seconds(self) -> float:
        """Host minus database, in seconds (positive: the host is ahead)."""
        return (self.host - self.database).total_seconds()


def read_clocks(engine: Engine, host_clock: Callable[[], datetime] = utc_now) -> ClockReading:
    with engine.connect() as conn:
        before = host_clock()
        database = conn.execute(_queries["database_clock"]).scalar_one()
        after = host_clock()
    return ClockReading(before + (after - before) / 2, database, (after - before).total_seconds() / 2)


def check_clock_skew(engine: Engine, max_seconds: float, host_clock: Callable[[], datetime] = utc_now) -> None:
    reading = read_clocks(engine, host_clock)
    if abs(reading.skew_seconds) - reading.uncertainty_seconds > max_seconds:
        raise ConfigError(
            f"REWARDS_MAX_CLOCK_SKEW_SECONDS: this host's clock ({reading.host.isoformat()}) differs from the "
            f"database's ({reading.database.isoformat()}) by {reading.skew_seconds:+.1f} s, more than "
            f"{max_seconds:g} s; fix the host's time synchronisation (NTP)"
        )


def check_reports_dir(path: Path) -> None:
    """The folder exists (created if missing) and takes a new file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"REWARDS_REPORTS_DIR: {path} is a file, not a folder") from None
    except OSError as error:
        raise ConfigError(f"REWARDS_REPORTS_DIR: cannot create {path} ({error.strerror})") from None
    if not path.is_dir():
        raise ConfigError(f"REWARDS_REPORTS_DIR: {path} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"REWARDS_REPORTS_DIR: cannot write in {path} ({error.strerror})") from None
