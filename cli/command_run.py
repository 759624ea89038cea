"""`run JOB` and `run-all`: jobs run by hand, with a progress bar on a terminal and a short summary."""
from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime

from sqlalchemy import Engine

from cli.database import engine
from cli.process import stop_on_signals
from cli.summary import run_summary
from cli.terminal import stdout_console
from cli.usage import EXIT_BUSY, EXIT_FAILED, EXIT_OK, UsageError, as_of, job_named
from core import startup
from core.job import Job, ProgressReporter, no_progress
from core.logs import hide_actions
from core.runner import RunResult, run_job
from core.runs import AlreadyRunning
from jobs.settings import RuleSettings

AnyJob = Job[RuleSettings]


def cmd_run(args: argparse.Namespace, settings: RuleSettings) -> int:
    job = job_named(args.job)
    if args.repair and job.name != "reconcile":
        raise UsageError("--repair: only the reconcile job repairs")
    when = as_of(args)
    database = engine(settings)
    check_before_runs(settings, database, [job], dry_run=args.dry_run)
    stop = stop_on_signals()
    try:
        result = run_one(job, args, settings, database, when, stop, repair=args.repair or settings.reconcile_repair)
    except AlreadyRunning as busy:
        print(busy, file=sys.stderr)
        return EXIT_BUSY
    if result.status == "SKIPPED":  # it waited for a running upstream job, in vain
        print(result.error, file=sys.stderr)
        return EXIT_BUSY
    return EXIT_OK if result.status == "SUCCEEDED" else EXIT_FAILED


def cmd_run_all(args: argparse.Namespace, settings: RuleSettings) -> int:
    """Every job in pipeline order, going on past a failure: 1 if any failed, else 3 if any was busy."""
    from jobs import PIPELINE  # every job module: only here (`run JOB` loads its own, an idle run starts faster)

    when = as_of(args)
    database = engine(settings)
    check_before_runs(settings, database, PIPELINE, dry_run=args.dry_run)
    stop = stop_on_signals()
    failed = busy = False
    for job in PIPELINE:
        if stop.is_set():
            break
        try:
            result = run_one(job, args, settings, database, when, stop, repair=settings.reconcile_repair)
        except AlreadyRunning as error:
            print(error, file=sys.stderr)
            busy = True
            continue
        if result.status == "SKIPPED":
            print(result.error, file=sys.stderr)
            busy = True
            continue
        failed = failed or result.status != "SUCCEEDED"
    if failed or stop.is_set():
        return EXIT_FAILED
    return EXIT_BUSY if busy else EXIT_OK


def check_before_runs(settings: RuleSettings, database: Engine, jobs: Iterable[AnyJob], *, dry_run: bool) -> None:
    """Refuse (exit 2) a host clock off the database's, a reports folder the jobs cannot write, or
    what a job's own check refuses (a payments feed without a column the reward jobs read)."""
    startup.check_clock_skew(database, settings.max_clock_skew_seconds)
    jobs = list(jobs)
    for job in jobs:
        if job.check is not None:
            job.check(database, settings)
    if not dry_run and any(job.writes_reports for job in jobs):
        startup.check_reports_dir(settings.reports_dir)


def run_one(job: AnyJob, args: argparse.Namespace, settings: RuleSettings, database: Engine, when: datetime,
            stop: threading.Event, *, repair: bool = False) -> RunResult:
    with progress_display(job.name, settings, quiet=args.json, own_summary=True) as report:
        result = run_job(job, settings=settings, engine=database, as_of=when, trigger="manual",
                         dry_run=args.dry_run, repair=repair, stop=stop, progress=report)
    if args.json:
        print(json.dumps(result.as_json(), default=str), flush=True)
    elif result.run_id is None:  # the database failed it before it had a run
        print(f"error: {job.name} could not start: {result.error}", file=sys.stderr)
    else:
        stdout_console().print(run_summary(result), markup=False)
    return result


def progress_display(job: str, settings: RuleSettings, *, quiet: bool = False,
                     own_summary: bool = False) -> AbstractContextManager[ProgressReporter]:
    """A progress bar on a terminal, nothing otherwise (or when `quiet`). With `own_summary` (a run
    that ends with its one summary), the run's start/finish log lines are left to that summary."""
    if quiet or not sys.stderr.isatty():
        return nullcontext(no_progress)
    from cli.progress import RunProgress  # rich's live display: only on a terminal

    if own_summary:
        hide_actions("run_started", "run_finished")
    return RunProgress(job, batch_size=settings.batch_size)
