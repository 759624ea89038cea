"""What every job shares: its description (`Job`), its run context, and the batch loop.

A job is a function `run(ctx)` that does its work in batches through `ctx.batches(step)`. Each
batch is its own short transaction that also renews the run's lease, so a crash loses at most the
batch in flight and a run that lost its lease cannot commit. The run's stats are stored in the same
transaction as the batch's rows, so every committed row is counted on the row of the run that wrote
it, whatever happens next. A stop request (SIGTERM) is honoured between batches.
"""
from __future__ import annotations

import copy
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Generic, Iterator, Mapping, Protocol, TypeVar
from uuid import UUID

import structlog
from sqlalchemy import Connection, Engine, Row
from structlog.typing import FilteringBoundLogger

from core import runs
from core.ledger import WrittenPoints
from core.settings import AnySettings, env_name


@contextmanager
def session_tables(conn: Connection, *names: str) -> Iterator[None]:
    """Temporary tables that outlive this connection's transactions, e.g. a run's plan that its
    batches read one by one (`RunContext.batches(…, connection=conn)`): dropped before (a pooled
    connection may still hold one from an earlier run) and after."""
    def drop() -> None:
        for name in names:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS pg_temp.{name}")
        conn.commit()

    drop()
    try:
        yield
    finally:
        if not conn.invalidated:
            conn.rollback()
            drop()


class StopRequested(Exception):
    """The process was asked to stop; the run ends after its current batch."""


# Where a keyset walk over uuid ids starts: before every id.
BEFORE_ALL_IDS = UUID(int=0)


# What a job's batches walk by: a keyset cursor (the last id done) or the number of a planned batch.
Cursor = TypeVar("Cursor")


@dataclass(frozen=True)
class Batch(Generic[Cursor]):
    """One batch's outcome: the keyset cursor to continue after (None when done) and items handled."""

    next_after: Cursor | None
    items: int = 0

    @staticmethod
    def numbered(number: int, of: int, items: int) -> Batch[int]:
        """Batch `number` (from 0) of a plan numbered in `of` batches: the next number, None after the last."""
        return Batch(next_after=number + 1 if number + 1 < of else None, items=items)


# A run's stats, stored as JSON in job_runs.stats. Any: each job writes keys of its own (counts it adds to
# with `+=`, strings, nested counts by kind) that only it and the face's labels know.
Stats = dict[str, Any]


class ProgressReporter(Protocol):
    def __call__(self, *, job: str, batches: int, items: int, total: int | None) -> None: ...


def no_progress(*, job: str, batches: int, items: int, total: int | None) -> None:
    return None


@dataclass(frozen=True)
class Job(Generic[AnySettings]):
    """A job of the pipeline, typed by the settings class its run reads (`Job[RuleSettings]` in jobs/):
    core hands it the settings it is given, of that class, and reads only the fields of `CoreSettings`."""

    name: str
    run: Callable[[RunContext[AnySettings]], None]
    # Checks what the job needs of the database before a run is claimed; raises ConfigError (exit 2).
    check: Callable[[Engine, AnySettings], None] | None = None
    settings_used: tuple[str, ...] = ()
    description: str = ""
    # Writes files under REWARDS_REPORTS_DIR: a run is refused at start when that folder takes no file.
    writes_reports: bool = False
    # What a person reads for each of the job's own stats keys, in the order the face tells them
    # ("<number> <label>"); a key labelled None is bookkeeping, left to `show`. Read by the face only.
    stats_labels: Mapping[str, str | None] = field(default_factory=dict)

    def rule_settings(self, settings: AnySettings) -> dict[str, str]:
        """The settings this job's rules read, as `{ENV_NAME: value}` for job_runs.settings."""
        return {env_name(name): str(getattr(settings, name)) for name in self.settings_used}


@dataclass
class RunContext(Generic[AnySettings]):
    job: str
    run_id: int
    as_of: datetime
    settings: AnySettings
    engine: Engine
    dry_run: bool = False
    repair: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    progress: ProgressReporter = no_progress
    stats: Stats = field(default_factory=dict)
    # True once the run recorded its own end (`recording`): the runner then has nothing to finish.
    recorded: bool = False

    @property
    def log(self) -> FilteringBoundLogger:
        logger: FilteringBoundLogger = structlog.get_logger("rewards.job")  # the class core/logs.py configures
        return logger

    def count(self, key: str, amount: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + amount

    def record_points(self, written: WrittenPoints) -> None:
        """Add a ledger write (or, in a dry run, a preview) to the run's stats."""
        for kind, rows in written.rows.items():
            by_type = self.stats.setdefault("rows_written", {})
            by_type[kind] = by_type.get(kind, 0) + rows
        for kind, points in written.points.items():
            by_type = self.stats.setdefault("points_written", {})
            by_type[kind] = by_type.get(kind, 0) + points

    def heartbeat(self, conn: Connection) -> None:
        runs.heartbeat(conn, self.run_id, self.stats)

    @contextmanager
    def recording(self) -> Iterator[Connection]:
        """One transaction that commits what the block writes together with the run's end (SUCCEEDED,
        with its stats): for a job that must be all-or-nothing, whose outcome (a report, a repair) may
        not be committed by a run that is not recorded, nor a run recorded without it. Raises LeaseLost
        (and commits nothing) when the run was taken over."""
        with self.engine.begin() as conn:
            self.heartbeat(conn)
            yield conn
            if not runs.finish_in(conn, self.run_id, status="SUCCEEDED", stats=self.stats, error=None):
                raise runs.LeaseLost(f"run {self.run_id} lost its lease and was taken over")
        self.recorded = True

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise StopRequested(
                f"stopped on request after {self.stats.get('batches', 0)} batches; the next run finishes the work"
            )

    def _note_batch_seconds(self, seconds: float) -> None:
        """Longest batch transaction so far: the longest any row lock of this run was held."""
        self.stats["max_batch_seconds"] = round(max(seconds, self.stats.get("max_batch_seconds", 0.0)), 3)

    def wait_for_jobs(self, jobs: tuple[str, ...], *, timeout_seconds: float) -> None:
        """Wait while a run of `jobs` is RUNNING (bounded; raises runs.StillRunning), then record in the
        stats the latest run of each (`upstream_runs`): what this run saw upstream."""
        def say_waiting(holder: Row[Any]) -> None:
            self.log.info("waiting for a running job to finish", action="waiting_for_job", waiting_for=holder.job,
                          holder_run_id=holder.id, host=holder.host, pid=holder.pid, limit_seconds=timeout_seconds)

        try:
            runs.wait_until_none_running(self.engine, jobs, waiter=self.job, timeout_seconds=timeout_seconds,
                                         stop=self.stop, on_wait=say_waiting)
        except InterruptedError as stopped:
            raise StopRequested(str(stopped)) from None
        self.stats["upstream_runs"] = {
            job: {"run_id": run.id, "status": run.status, "as_of": run.as_of.isoformat()}
            for job, run in sorted(runs.latest_runs_of(self.engine, jobs).items())
        }

    @contextmanager
    def _transaction(self, connection: Connection | None) -> Iterator[Connection]:
        if connection is None:
            with self.engine.begin() as conn:
                yield conn
        else:
            with connection.begin():
                yield connection

    def batches(self, step: Callable[[Connection, Cursor | None], Batch[Cursor]], *, total: int | None = None,
                connection: Connection | None = None) -> None:
        """Run `step(conn, after)` batch after batch, each in its own transaction, until it is done:
        on `connection` when given (a job that keeps session state, e.g. a temporary table), else on
        a connection of the pool.

        The batch's stats are stored in its transaction; if it rolls back, so do they (here too)."""
        after: Cursor | None = None
        while True:
            self.check_stop()
            started = time.monotonic()
            before = copy.deepcopy(self.stats)
            try:
                with self._transaction(connection) as conn:
                    self.heartbeat(conn)
                    batch = step(conn, after)
                    self.count("batches")
                    self.count("items", batch.items)
                    self._note_batch_seconds(time.monotonic() - started)
                    runs.record_progress(conn, self.run_id, self.stats)
            except BaseException:
                self.stats.clear()
                self.stats.update(before)
                raise
            self.progress(job=self.job, batches=self.stats["batches"], items=self.stats["items"], total=total)
            if batch.next_after is None:
                return
            after = batch.next_after
