"""The daemon: every job on its cron schedule (UTC) until SIGTERM or SIGINT.

- Every replica registers the same schedule; `job_runs` decides which one runs a tick (a replica
  that finds the tick claimed logs `tick_taken` and moves on). A scheduled run's as-of instant is its
  scheduled fire time: the latest fire time of its cron trigger when the run starts (APScheduler does
  not hand the fire time to the job; with coalescing and one instance per job, the latest due fire
  time is the one it runs for).
- Only APScheduler's public API: `add_job` with a cron trigger, coalescing, one instance and an
  explicit misfire grace per job; a listener for ticks missed or skipped. The daemon only schedules:
  a run's status, metrics and run lines are `core/runner.py`'s.
- At start, and again every `REWARDS_CATCH_UP_CHECK_SECONDS` (default 60), a job whose last success
  is older than its previous fire time runs once, as trigger `catch-up`, as of now, claiming that previous tick (so
  replicas starting together run it once). A dead run's row does not stop it: the claim takes it over
  (at once when it ran on this host and its process is gone, else after the lease on its row). The
  periodic check leaves alone a job running here or elsewhere, one waiting for a retry, and one
  whose last run FAILED (the retry policy, then the next tick, take care of those).
- A frequent internal job beats a heartbeat; `/healthz` fails when it is older than
  `LOOP_STALL_SECONDS` (the scheduler loop is stuck), not only when the database is down. Whether the
  database answers is asked in the background (`core/probe.py`): a health check never waits on it.
- A run that fails (database down, a bug) is retried with exponential backoff and jitter, at most
  `REWARDS_RETRY_ATTEMPTS` times and never past the job's next tick. The daemon itself never dies of
  a database outage: it waits for the database at start and every run catches its errors.
- A stop is a flag (the face sets it on SIGTERM/SIGINT: `cli/process.py`). The scheduler then stops
  starting runs, a running job stops after its current batch (or its statement in flight is cancelled:
  `core/stopping.py`), and `run_until_stopped` returns within `SHUTDOWN_SECONDS`, saying whether every
  run ended (the face decides how the process ends).
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic

import structlog
from apscheduler.events import (EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, EVENT_SCHEDULER_START,
                                JobExecutionEvent, JobSubmissionEvent, SchedulerEvent)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.base import SchedulerNotRunningError
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy import Engine, Row
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from core import migrations, runs, startup
from core.clock import utc_now
from core.connect import reading
from core.job import Job
from core.probe import OK, DatabaseProbe
from core.runner import RunResult, run_job
from core.settings import AnySettings, CoreSettings, cron_trigger
from core.stopping import STOP_DEADLINE_SECONDS
from core.text import one_line

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

log = structlog.get_logger("rewards.daemon")

SHUTDOWN_SECONDS = STOP_DEADLINE_SECONDS - 0.5  # runs stop (or are cancelled) before the stop deadline
LOOP_BEAT_SECONDS = 5
LOOP_STALL_SECONDS = 60  # /healthz fails when the scheduler loop has not beaten for this long
_LOOKBACKS = (timedelta(minutes=1), timedelta(hours=1), timedelta(days=1), timedelta(days=32),
              timedelta(days=367), timedelta(days=8 * 366))


# ── pure rules ───────────────────────────────────────────────────────────────

def previous_fire_time(trigger: CronTrigger, now: datetime) -> datetime | None:
    """The latest fire time of a cron `trigger` at or before `now` (None if none in eight years)."""
    for lookback in _LOOKBACKS:
        fire: datetime | None = trigger.get_next_fire_time(None, now - lookback)
        if fire is not None and fire <= now:
            break
    else:
        return None
    while True:
        following: datetime | None = trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        if following is None or following > now:
            return fire.astimezone(timezone.utc)
        fire = following


def needs_catch_up(last_success: Row[Any] | None, previous_tick: datetime) -> bool:
    """True unless a (non-dry) success covers the previous tick: a run of that tick or a later one,
    or a run as of that instant or later."""
    if last_success is None:
        return True
    covered_until = [at for at in (last_success.scheduled_for, last_success.as_of) if at is not None]
    return not any(at >= previous_tick for at in covered_until)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: retry n waits base × 2^(n-1), capped, times 50–100 %."""

    base_seconds: float = 30
    max_seconds: float = 900
    attempts: int = 4

    @classmethod
    def from_settings(cls, settings: CoreSettings) -> RetryPolicy:
        return cls(settings.retry_base_seconds, settings.retry_max_seconds, settings.retry_attempts)

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * 2.0 ** (retry - 1))
        return ceiling * (0.5 + rng() / 2)

    def next_retry(self, retry: int, now: datetime, next_tick: datetime | None,
                   rng: Callable[[], float] = random.random) -> datetime | None:
        """When to make retry number `retry` (1 = the first), or None: attempts used up, or the
        job's next tick comes first (it does the work then)."""
        if retry > self.attempts:
            return None
        when = now + timedelta(seconds=self.delay(retry, rng))
        if next_tick is not None and when >= next_tick:
            return None
        return when


# ── the scheduler ────────────────────────────────────────────────────────────

class Daemon(Generic[AnySettings]):
    """The scheduler of one replica; `serve()` blocks until `stop` is set."""

    def __init__(self, settings: AnySettings, engine: Engine, *, jobs: tuple[Job[AnySettings], ...],
                 stop: threading.Event | None = None, rng: Callable[[], float] = random.random) -> None:
        self.settings, self.engine, self.jobs = settings, engine, jobs
        self.stop = stop or threading.Event()
        self.retry = RetryPolicy.from_settings(settings)
        self.rng = rng
        self.triggers = {job.name: cron_trigger(expression) for job in jobs
                         if (expression := settings.schedule_for(job.name))}
        self._in_flight: set[str] = set()
        self._last_beat = time.monotonic()
        self._active = 0
        self._idle = threading.Condition()
        self.database = DatabaseProbe(engine)
        self.scheduler = BlockingScheduler(
            timezone=timezone.utc,
            executors={"default": ThreadPoolExecutor(max_workers=2 * len(jobs) + 1)},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": settings.misfire_grace_seconds},
        )
        self.scheduler.add_listener(self._on_scheduler_event,
                                    EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_ERROR)
        self.scheduler.add_listener(self._on_scheduler_start, EVENT_SCHEDULER_START)

    # lifecycle

    def serve(self) -> bool:
        """Run until `stop` is set; True when every run ended within SHUTDOWN_SECONDS after it."""
        if self.stop.is_set():
            return True
        for job in self.jobs:
            if job.name in self.triggers:
                self.scheduler.add_job(self._on_tick, self.triggers[job.name], args=[job], id=job.name,
                                       name=job.name)
        self.scheduler.add_job(self._catch_up, "date", run_date=utc_now(), id="catch-up",
                               misfire_grace_time=None)
        self._schedule_catch_up_check()
        self.scheduler.add_job(self._beat, "interval", seconds=LOOP_BEAT_SECONDS, id="loop-beat",
                               misfire_grace_time=None)
        self._beat()
        log.info("daemon started", action="daemon_started", pid=os.getpid(), host=runs.HOST,
                 schedules={job.name: self.settings.schedule_for(job.name) or "off" for job in self.jobs},
                 next_fire={name: str(trigger.get_next_fire_time(None, utc_now()))
                            for name, trigger in self.triggers.items()})
        self.scheduler.start()  # blocks until the stop watcher shuts it down
        log.info("stopping: no new runs; a running job ends after its current batch", action="daemon_stopping")
        with self._idle:
            finished = self._idle.wait_for(lambda: self._active == 0, timeout=SHUTDOWN_SECONDS)
        self.database.close()
        if finished:
            log.info("daemon stopped", action="daemon_stopped")
        else:
            log.error("a run did not stop in time; exiting anyway (its lease expires and the next run "
                      "takes over)", action="daemon_stop_timeout", seconds=SHUTDOWN_SECONDS)
        return finished

    def _on_scheduler_start(self, _event: SchedulerEvent) -> None:
        threading.Thread(target=self._shutdown_when_stopped, name="stop-watcher", daemon=True).start()

    def _shutdown_when_stopped(self) -> None:
        self.stop.wait()
        try:
            self.scheduler.shutdown(wait=False)  # nothing before it (a log line the pipe does not take) may hold it
        except SchedulerNotRunningError:
            pass

    def _beat(self) -> None:
        self._last_beat = time.monotonic()

    def loop_beat_age(self) -> float:
        return time.monotonic() - self._last_beat

    def health(self) -> tuple[bool, dict[str, str]]:
        """Healthy when the scheduler loop runs and beats (and is not stopping) and the database answered
        the background probe lately; never waits."""
        scheduler = "stopping" if self.stop.is_set() else ("running" if self.scheduler.running else "not started")
        if scheduler == "running" and self.loop_beat_age() > LOOP_STALL_SECONDS:
            scheduler = f"stuck: no heartbeat of the scheduler loop for {self.loop_beat_age():.0f} s"
        database = self.database.start().state()
        return scheduler == "running" and database == OK, {"scheduler": scheduler, "database": database}

    # runs

    def _on_tick(self, job: Job[AnySettings]) -> None:
        tick = previous_fire_time(self.triggers[job.name], utc_now())
        if tick is not None:
            self._attempt(job, "schedule", tick, tick, 1)

    def _schedule_catch_up_check(self) -> None:
        """The next periodic check, counted from the end of this one (so two never overlap)."""
        when = utc_now() + timedelta(seconds=self.settings.catch_up_check_seconds)
        self.scheduler.add_job(self._periodic_catch_up, "date", run_date=when, id="catch-up-check",
                               replace_existing=True, misfire_grace_time=None)

    def _periodic_catch_up(self) -> None:
        try:
            self._catch_up(periodic=True)
        finally:
            if not self.stop.is_set():
                self._schedule_catch_up_check()

    def _catch_up(self, periodic: bool = False) -> None:
        """Run each job (in pipeline order) whose last success is older than its previous tick."""
        now = utc_now()
        try:
            successes = runs.last_successes(self.engine)
            leave_alone = self._left_to_others() if periodic else set()
        except SQLAlchemyError as error:
            if periodic:
                log.warning("catch-up check: database unreachable", action="catch_up_check_failed",
                            error=one_line(error, driver_message=True))
                return
            when = now + timedelta(seconds=self.retry.delay(1, self.rng))
            log.warning("catch-up: database unreachable; trying again", action="catch_up_postponed",
                        error=one_line(error, driver_message=True), at=when.isoformat())
            self.scheduler.add_job(self._catch_up, "date", run_date=when, id="catch-up",
                                   replace_existing=True, misfire_grace_time=None)
            return
        caught_up = []
        for job in self.jobs:
            if self.stop.is_set():
                return
            trigger = self.triggers.get(job.name)
            tick = previous_fire_time(trigger, now) if trigger else None
            if tick is None or job.name in leave_alone or not needs_catch_up(successes.get(job.name), tick):
                continue
            log.info("catching up a missed tick", action="catch_up", job=job.name, missed_tick=tick.isoformat())
            self._attempt(job, "catch-up", now, tick, 1)
            caught_up.append(job.name)
        if caught_up or not periodic:
            log.info("catch-up done", action="catch_up_done", jobs=caught_up)

    def _left_to_others(self) -> set[str]:
        """Jobs a periodic catch-up leaves alone: running here, waiting for a retry, running elsewhere
        (alive), or whose last run FAILED (retries, then the next tick, handle those)."""
        names = {job.name for job in self.jobs}
        left = set(self._in_flight) | {name for name in names if self.scheduler.get_job(f"retry:{name}")}
        running = runs.running_runs(self.engine, sorted(names))
        left |= {run.job for run in running if not runs.takeable(self.engine, run)}
        with reading(self.engine) as fetch:
            left |= {name for name, run in runs.last_runs(fetch).items() if run.status == "FAILED"}
        return left

    def _attempt(self, job: Job[AnySettings], trigger: str, as_of: datetime, scheduled_for: datetime, attempt: int,
                 failed_before: RunResult | None = None) -> None:
        """One try of a run; a failure schedules the next try (which hands this one to the runner, so
        it is recorded FAILED even when the database died mid-run and the run could not say so)."""
        if self.stop.is_set():
            return
        with self._running(job.name), structlog.contextvars.bound_contextvars(
                job=job.name, trigger=trigger, scheduled_for=scheduled_for.isoformat(), attempt=attempt):
            try:
                result = run_job(job, settings=self.settings, engine=self.engine, as_of=as_of, trigger=trigger,
                                 scheduled_for=scheduled_for, stop=self.stop, retrying=failed_before)
            except runs.TickTaken:
                log.info("tick already claimed by another replica", action="tick_taken")
                return
            except runs.AlreadyRunning as busy:
                log.info("job already running elsewhere; tick skipped", action="already_running", holder=str(busy))
                return
            if result.status != "FAILED":
                if attempt > 1:
                    log.info("retry succeeded", action="retry_succeeded", status=result.status)
            elif not self.stop.is_set():
                started = result.run_id is not None  # else it never started: the earlier try is still unrecorded
                self._schedule_retry(job, trigger, as_of, scheduled_for, attempt, result if started else failed_before)

    def _schedule_retry(self, job: Job[AnySettings], trigger: str, as_of: datetime, scheduled_for: datetime,
                        attempt: int, failed_run: RunResult | None) -> None:
        now = utc_now()
        cron = self.triggers.get(job.name)
        next_tick = cron.get_next_fire_time(None, now) if cron else None
        when = self.retry.next_retry(attempt, now, next_tick, self.rng)
        if when is None:
            log.warning("no more retries: the next tick runs the job", action="retry_given_up",
                        next_tick=next_tick.isoformat() if next_tick else None)
            return
        self.scheduler.add_job(self._attempt, "date", run_date=when, id=f"retry:{job.name}", replace_existing=True,
                               args=[job, trigger, as_of, scheduled_for, attempt + 1, failed_run])
        log.warning("run will be retried", action="retry_scheduled", next_attempt=attempt + 1,
                    at=when.isoformat(), in_seconds=round((when - now).total_seconds(), 1))

    @contextmanager
    def _running(self, job: str) -> Iterator[None]:
        with self._idle:
            self._active += 1
            self._in_flight.add(job)
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._in_flight.discard(job)
                self._idle.notify_all()

    def _on_scheduler_event(self, event: JobExecutionEvent | JobSubmissionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning("tick missed: later than the misfire grace", action="tick_missed", job=event.job_id,
                        scheduled_for=event.scheduled_run_time.isoformat())
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("tick skipped: the previous one is still running", action="tick_overlap", job=event.job_id)
        else:
            log.error("scheduler job raised", action="scheduler_job_error", job=event.job_id,
                      error=repr(event.exception), traceback=event.traceback)


# ── start and serve ──────────────────────────────────────────────────────────

def daemon_engine(settings: CoreSettings) -> Engine:
    """The engine, with the timeouts of the settings (an unreachable database fails a run fast)."""
    from core.db import engine_from_settings

    return engine_from_settings(settings)


def prepare_database(engine: Engine, settings: AnySettings, stop: threading.Event,
                     jobs: tuple[Job[AnySettings], ...] = ()) -> bool:
    """Wait until the database answers, then migrate (REWARDS_MIGRATE_ON_START=true) or refuse to
    start with pending migrations (MigrationError: exit 2) or what a job's own check refuses
    (ConfigError: exit 2). False when stopped while waiting."""
    retry = 0
    while not stop.is_set():
        try:
            if settings.migrate_on_start:
                applied = migrations.migrate(engine)
                log.info("migrations applied", action="migrations_applied",
                         applied=[f"{m.version}_{m.name}" for m in applied])
            else:
                migrations.require_migrated(engine, hint=" or set REWARDS_MIGRATE_ON_START=true")
            startup.check_clock_skew(engine, settings.max_clock_skew_seconds)
            for job in jobs:
                if job.check is not None:
                    job.check(engine, settings)
            return True
        except OperationalError as error:
            retry += 1
            delay = min(60.0, RetryPolicy.from_settings(settings).delay(retry))
            log.warning("database unreachable; waiting for it", action="database_unavailable",
                        error=one_line(error, driver_message=True), retry_in=round(delay, 1))
            stop.wait(delay)
    return False


def run_until_stopped(settings: AnySettings, jobs: tuple[Job[AnySettings], ...], stop: threading.Event) -> bool:
    """Check, wait for the database, serve `jobs` on their schedules and HTTP until `stop` is set; True
    when every run ended within SHUTDOWN_SECONDS after it (False: one did not, and the caller should
    not wait for it)."""
    from core.http import serve_http

    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # its warnings are logged as events here
    engine = daemon_engine(settings)
    daemon = Daemon(settings, engine, jobs=jobs, stop=stop)
    if any(job.writes_reports and job.name in daemon.triggers for job in daemon.jobs):
        startup.check_reports_dir(settings.reports_dir)
    server = serve_http(settings.http_port, daemon.health, engine, [job.name for job in daemon.jobs],
                        host=settings.http_host)
    if server is not None:
        daemon.database.start()
    try:
        return daemon.serve() if prepare_database(engine, settings, stop, daemon.jobs) else True
    finally:
        if server is not None:
            server.close()
        daemon.database.close()
