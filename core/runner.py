"""Runs one job once: claim the run, bind the log context, run it, record how it ended.

The CLI and the daemon both come through `run_job`, so a run is the same whoever starts it: this
module is the one place that records a run's status, counts it in the metrics and logs its start and
end (the daemon only decides when to call it, and whether to try again).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import TypedDict

import structlog
from sqlalchemy import Engine

from core import runs
from core.job import Job, ProgressReporter, RunContext, Stats, StopRequested, no_progress
from core.settings import AnySettings
from core.text import one_line

log = structlog.get_logger("rewards.runner")

QUERY_CANCELED = "57014"  # SQLSTATE of a statement cancelled (by a stop request, or its timeout)


@dataclass
class RunResult:
    job: str
    run_id: int | None
    status: str
    as_of: datetime
    stats: Stats = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {"job": self.job, "run_id": self.run_id, "status": self.status,
                "as_of": self.as_of.isoformat(), "stats": self.stats}


class _Claim(TypedDict):
    """What a claimed run and a skipped one record alike."""

    job: str
    trigger: str
    as_of: datetime
    scheduled_for: datetime | None
    dry_run: bool
    settings: dict[str, str]


def run_job(
    job: Job[AnySettings],
    *,
    settings: AnySettings,
    engine: Engine,
    as_of: datetime,
    trigger: str = "manual",
    scheduled_for: datetime | None = None,
    dry_run: bool = False,
    repair: bool = False,
    stop: threading.Event | None = None,
    progress: ProgressReporter = no_progress,
    retrying: RunResult | None = None,
) -> RunResult:
    """Run `job` for `as_of` (its `check` was made at start). Raises AlreadyRunning (after recording a
    SKIPPED row) or TickTaken. A run that cannot even start (the database is down) is FAILED with no
    run id. `retrying`: the failed try this one repeats, whose end is recorded first if the database
    missed it (it died mid-run)."""
    rule_settings = job.rule_settings(settings)
    claim = _Claim(job=job.name, trigger=trigger, as_of=as_of, scheduled_for=scheduled_for,
                   dry_run=dry_run, settings=rule_settings)
    try:
        _record_missed_failure(engine, retrying)
        run_id = runs.claim(engine, **claim, lease_seconds=settings.run_lease_seconds)
    except runs.AlreadyRunning as busy:
        runs.record_skipped(engine, **claim, reason=str(busy))
        _count(job.name, "SKIPPED")
        raise
    except runs.TickTaken:
        raise
    except Exception as unclaimed:  # the database is down, …: nothing was recorded
        return _not_started(job, as_of, unclaimed)

    ctx = RunContext(job=job.name, run_id=run_id, as_of=as_of, settings=settings, engine=engine,
                     dry_run=dry_run, repair=repair, stop=stop or threading.Event(), progress=progress)
    if dry_run:
        ctx.stats["dry_run"] = True
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(job=job.name, run_id=run_id, as_of=as_of.isoformat(),
                                                 trigger=trigger):
        log.info("run started", action="run_started", dry_run=dry_run, settings=rule_settings)
        status, error = "SUCCEEDED", None
        try:
            job.run(ctx)
        except runs.StillRunning as busy:
            status, error = "SKIPPED", str(busy)
            log.warning("run skipped: an upstream job is still running", action="run_waited_too_long",
                        error=error)
        except runs.LeaseLost as lost:
            status, error = "ABANDONED", one_line(lost)
            log.error("run lost its lease", action="run_lease_lost", error=error)
        except StopRequested as stopped:
            status, error = "FAILED", str(stopped)
            log.warning("run stopped", action="run_stopped", error=error)
        except Exception as failure:
            status = "FAILED"
            if ctx.stop.is_set() and _cancelled(failure):  # the stop cancelled its statement in flight
                error = (f"stopped on request after {ctx.stats.get('batches', 0)} batches (the statement in flight "
                         "was cancelled); the next run finishes the work")
                log.warning("run stopped", action="run_stopped", error=error)
            else:
                error = one_line(failure)
                log.exception("run failed", action="run_failed", error=error)
        seconds = time.monotonic() - started
        if ctx.recorded:  # the run recorded its end itself, with its work (RunContext.recording)
            if status != "SUCCEEDED":  # a step after the record failed: the run stays recorded
                log.error("a step after the run was recorded failed", action="run_after_record_failed",
                          error=error)
            status = "SUCCEEDED"
        elif status != "ABANDONED":
            try:
                if not runs.finish(engine, run_id, status=status, stats=ctx.stats, error=error):
                    # Taken over meanwhile: whatever it did, this run must not say it succeeded.
                    status, error = "ABANDONED", f"run {run_id} lost its lease and was taken over before it ended"
                    log.error("run lost its lease", action="run_lease_lost", error=error)
            except Exception as failure:  # the lease will expire and the next run takes over
                status, error = "FAILED", f"could not record the end of the run: {one_line(failure)}"
                log.error("could not record the end of the run", action="run_finish_failed", error=error)
        served = _served_metrics()
        if served is not None:
            served.observe_run(job.name, status, seconds, ctx.stats, dry_run=dry_run)
        log.info("run finished", action="run_finished", status=status, seconds=round(seconds, 3),
                 stats=ctx.stats, error=error)
    return RunResult(job.name, run_id, status, as_of, ctx.stats, error, seconds)


def _served_metrics() -> ModuleType | None:
    """`core.metrics` where this process serves it (the daemon's /metrics imports it), else None: a
    command run by hand, whose counters no one can read, leaves prometheus-client out of its start."""
    return sys.modules.get("core.metrics")


def _count(job: str, status: str) -> None:
    served = _served_metrics()
    if served is not None:
        served.JOB_RUNS.labels(job=job, status=status).inc()


def _not_started(job: Job[AnySettings], as_of: datetime, error: Exception) -> RunResult:
    """A run whose claim failed: counted FAILED, with no run id (nothing was recorded)."""
    message = one_line(error, driver_message=True)
    _count(job.name, "FAILED")
    log.error("run could not start", action="run_not_started", job=job.name, error=message)
    return RunResult(job.name, None, "FAILED", as_of, error=message)


def _record_missed_failure(engine: Engine, failed: RunResult | None) -> None:
    """Record a failed run's end if the database missed it (a no-op when it did not)."""
    if failed is not None and failed.run_id is not None and runs.finish(
            engine, failed.run_id, status="FAILED", stats=failed.stats, error=failed.error):
        log.warning("recorded the failure of a run whose end the database missed", action="run_end_recorded",
                    job=failed.job, failed_run_id=failed.run_id)


def _cancelled(failure: BaseException) -> bool:
    """Whether the database cancelled the statement (the driver's error, bare or wrapped by SQLAlchemy)."""
    driver_error = getattr(failure, "orig", None) or failure
    return getattr(driver_error, "pgcode", None) == QUERY_CANCELED
