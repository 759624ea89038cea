"""The measurements: for each job of the pipeline, on a clone of one dataset, in one process:

1. the BOUND: the job's whole work as one set-based statement (bench/bounds.sql; for reconcile, the
   comparison statement, then the rules audit's own statements, jobs/rules_audit.sql, and finance's
   liability schedule, breakage and restatements, jobs/liability.sql and jobs/period_close.sql), timed in one
   transaction and rolled back (then VACUUM, untimed, so the job finds the tables as they were);
2. the JOB through its real entry point, `python scheduler.py run JOB --as-of … --json` in a
   subprocess (the CLI's code path, batches, runs table and all): its run time (job_runs, start to
   finish), the process's wall time and peak RSS (wait4), and its stats (max_batch_seconds: the
   longest batch transaction, i.e. the longest any row lock was held);
3. a RERUN with nothing left to do.

Then the DAILY measurement: one day of the same world is added (cli/sample_data.advance: sign-ups,
activations, first and monthly payments, the app's ledger rows) and, on top (bench/daily.sql), what
billing and the app do to history in a day: refunds of rewarded payments (clawbacks), FAILED payments
of months long past turned PAID, payments recorded late for months long past, a few redemptions.
Each job then runs at as_of + 1 day against its EXACT DAILY BOUND: the same bound statement, which
derives everything owed under the whole history and anti-joins what is already written.

On a Citus cluster (a dataset with `citus`) there is no clone: a template database does not carry
the workers' shards. The run measures the dataset itself, in the same order as on a clone (each job's
bound and first run on the data as the jobs before it left it, its rerun, then the daily step), and
consumes it: its label is removed first, so the next run generates it again; it is dropped at the end
unless `keep`. The bounds run on the same cluster, through the coordinator.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import Engine, text

from bench.datasets import (Dataset, World, advance_world, create_database, drawn_shape, drop_database, forget_dataset,
                            migrated_engine)
from cli import sample_data
from jobs import PipelineSettings
from jobs.settings import RuleSettings
from core.sql import Queries

REPO = Path(__file__).resolve().parent.parent
_bounds = Queries(str(Path(__file__).with_name("bounds.sql")))
_daily = Queries(str(Path(__file__).with_name("daily.sql")))

# Issue 13's targets (issue 9 item 7 for the daily run).
MAX_JOB_TO_BOUND = 1.3
MAX_DAILY_TO_BOUND = 1.5
MAX_RERUN_TO_FIRST = 0.1
MAX_RSS_MB = 150.0
MAX_LOCK_SECONDS = 2.0
# The reward jobs share one rule, so one bound statement with the level's parameters.
_BOUND_BLOCK = {"recurring-rewards": "reward_rule", "level2-rewards": "reward_rule"}

# Tables each bound writes: vacuumed after its rollback, so the job meets no dead rows of it.
_BOUND_WRITES = {
    "expire-pending": ("user_referral_relationships",),
    "recurring-rewards": ("user_point_transactions", "user_point_balances", "referral_rewards"),
    "level2-rewards": ("user_point_transactions", "user_point_balances", "referral_rewards"),
    "expire-points": ("user_point_transactions", "user_point_balances"),
}
_JOB_WRITES = {**_BOUND_WRITES, "reconcile": ("user_point_balances",)}

Progress = Callable[[str], None]


@dataclass
class CliRun:
    """One `scheduler.py run` subprocess."""

    exit_code: int
    status: str | None
    run_id: int | None
    run_seconds: float | None
    wall_seconds: float
    peak_rss_mb: float
    stats: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def seconds(self) -> float:
        """The run's own duration (job_runs), the figure compared with the bound."""
        return self.run_seconds if self.run_seconds is not None else self.wall_seconds


@dataclass
class BoundRun:
    seconds: float
    rows: int
    points: int


@dataclass
class JobMeasure:
    job: str
    bound: BoundRun | None
    first: CliRun
    rerun: CliRun | None

    def ratio(self) -> float | None:
        if self.bound is None or self.bound.seconds <= 0:
            return None
        return self.first.seconds / self.bound.seconds

    def rerun_ratio(self) -> float | None:
        if self.rerun is None or self.first.seconds <= 0:
            return None
        return self.rerun.seconds / self.first.seconds

    def peak_rss_mb(self) -> float:
        return max(self.first.peak_rss_mb, self.rerun.peak_rss_mb if self.rerun else 0.0)

    def max_batch_seconds(self) -> float | None:
        values = [run.stats.get("max_batch_seconds") for run in (self.first, self.rerun) if run is not None]
        values = [float(v) for v in values if v is not None]
        return max(values) if values else None

    def targets(self) -> dict[str, bool | None]:
        """Issue 6's targets, met or not (None: not measurable for this job)."""
        ratio, rerun_ratio, lock = self.ratio(), self.rerun_ratio(), self.max_batch_seconds()
        return {
            "job_to_bound": None if ratio is None else ratio <= MAX_JOB_TO_BOUND,
            # reconcile (a full audit) and expiring-soon (a notice file) report on every run: they have
            # no "nothing left to do"
            "rerun_to_first": None if rerun_ratio is None or self.job in ("reconcile", "expiring-soon")
            else rerun_ratio <= MAX_RERUN_TO_FIRST,
            "peak_rss": self.peak_rss_mb() <= MAX_RSS_MB,
            "lock_hold": None if lock is None else lock <= MAX_LOCK_SECONDS,
        }

    def as_json(self) -> dict[str, Any]:
        return {"job": self.job, "bound": asdict(self.bound) if self.bound else None,
                "first": asdict(self.first), "rerun": asdict(self.rerun) if self.rerun else None,
                "job_to_bound": _round(self.ratio()), "rerun_to_first": _round(self.rerun_ratio()),
                "peak_rss_mb": round(self.peak_rss_mb(), 1), "max_batch_seconds": self.max_batch_seconds(),
                "targets": self.targets()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ── the bound ────────────────────────────────────────────────────────────────

def bound_params(settings: RuleSettings, as_of: datetime, job: str | None = None) -> dict[str, Any]:
    """The rule settings each bound statement needs, from the same Settings the jobs read."""
    params = {"as_of": as_of, "as_of_key": as_of.isoformat(), "pending_expiry_days": settings.pending_expiry_days,
              "points_per_usd": settings.points_per_usd, "expiry_months": settings.points_expiry_months,
              "counts_until": as_of - timedelta(days=settings.reward_hold_days)}
    if job == "recurring-rewards":
        params.update(level=1, first_month=1, last_month=settings.recurring_months, key_prefix="recurring",
                      ledger_type="REFERRAL_RECURRING", **_amount(settings.recurring_reward))
    elif job == "level2-rewards":
        params.update(level=2, first_month=0, last_month=settings.l2_months - 1, key_prefix="l2",
                      ledger_type="REFERRAL_L2", **_amount(settings.l2_reward))
    return params


def _amount(reward: Any) -> dict[str, Any]:
    fixed, percent = (reward.points, 0) if reward.points is not None else (0, reward.percent)
    return {"fixed_points": fixed, "percent": percent}


def _bound_block(job: str) -> str:
    return _BOUND_BLOCK.get(job, job.replace("-", "_"))


def has_bound(job: str) -> bool:
    try:
        _bounds.raw(_bound_block(job))
    except KeyError:
        return False
    return True


def run_bound(engine: Engine, job: str, settings: RuleSettings, as_of: datetime) -> BoundRun:
    """Time the job's single-statement bound in one transaction, then roll it back."""
    statement = _bounds.render(_bound_block(job), payments=settings.payments_table_sql)
    with engine.connect() as conn:
        if job == "reconcile":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        conn.exec_driver_sql("SET LOCAL jit = off")  # compiling a one-off statement costs more than it saves
        if _BOUND_BLOCK.get(job) == "reward_rule":
            # Hash and merge joins over the whole history, as the reward jobs plan theirs (a nested
            # loop over a CTE whose statistics are guessed is quadratic).
            conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        started = time.monotonic()
        row = conn.execute(statement, bound_params(settings, as_of, job)).one()
        if job == "reconcile":
            # Since issue 24 reconcile audits the rules too: its bound is the comparison plus the audit's
            # own statements, in the same snapshot (as `bench audit` measures them).
            # Since issue 25 every reconcile also reads finance's schedule, breakage and restatements
            # (SPEC v3), one statement each, so the bound reads them too.
            from jobs import liability, period_close, rules_audit

            rules_audit.audit(conn, settings)
            liability.schedule_and_breakage(conn, as_of, settings)
            period_close.restatements(conn, settings.points_per_usd)
        seconds = time.monotonic() - started
        conn.rollback()
    return BoundRun(round(seconds, 3), int(row.rows), int(row.points))


def vacuum(engine: Engine, tables: tuple[str, ...]) -> None:
    """Clear what a rolled-back bound or a job left (dead rows, stale statistics), untimed."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in tables:
            conn.exec_driver_sql(f"VACUUM (ANALYZE) public.{table}")


# ── the job, through the CLI ─────────────────────────────────────────────────

def run_cli(url: str, job: str, as_of: datetime, workdir: Path, engine: Engine) -> CliRun:
    """`python scheduler.py run JOB --as-of AS_OF --json` against `url`; peak RSS from wait4."""
    env = {**os.environ, "DATABASE_URL": url, "REWARDS_REPORTS_DIR": str(workdir / "reports"),
           "REWARDS_LOG_FORMAT": "json", "PYTHONPATH": str(REPO)}
    out_path, err_path = workdir / f"{job}.out", workdir / f"{job}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), "run", job,
                                    "--as-of", as_of.isoformat(), "--json"],
                                   cwd=workdir, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    result = _last_json_line(out_path.read_text())
    run_id = result.get("run_id")
    error = None if process.returncode == 0 else (err_path.read_text().strip().splitlines() or ["?"])[-1][:500]
    return CliRun(exit_code=process.returncode, status=result.get("status"), run_id=run_id,
                  run_seconds=_run_seconds(engine, run_id), wall_seconds=round(wall, 3),
                  peak_rss_mb=round(usage.ru_maxrss / 1024, 1), stats=result.get("stats") or {}, error=error)


def _last_json_line(output: str) -> dict[str, Any]:
    for line in reversed(output.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "job" in value:
            return value
    return {}


def _run_seconds(engine: Engine, run_id: int | None) -> float | None:
    if run_id is None:
        return None
    with engine.connect() as conn:
        seconds = conn.execute(text(
            "SELECT extract(epoch FROM finished_at - started_at) FROM public.job_runs WHERE id = :id"
        ), {"id": run_id}).scalar()
    return None if seconds is None else round(float(seconds), 3)


# ── one size ─────────────────────────────────────────────────────────────────

def measure_jobs(engine: Engine, url: str, jobs: list[str], as_of: datetime, workdir: Path,
                 settings: RuleSettings, progress: Progress, *, bound: bool = True,
                 rerun: bool = True) -> list[JobMeasure]:
    """Bound, job and rerun of each job in pipeline order, on the database behind `engine`."""
    measures = []
    for job in jobs:
        bound_run = None
        if bound and has_bound(job):
            progress(f"{job}: bound")
            bound_run = run_bound(engine, job, settings, as_of)
            vacuum(engine, _BOUND_WRITES.get(job, ()))
        progress(f"{job}: job")
        first = run_cli(url, job, as_of, workdir, engine)
        vacuum(engine, _JOB_WRITES.get(job, ()))
        second = None
        if rerun:
            progress(f"{job}: rerun")
            second = run_cli(url, job, as_of, workdir, engine)
        measures.append(JobMeasure(job, bound_run, first, second))
    return measures


def measure_size(server: str, dataset: Dataset, jobs: list[str], *, daily: bool = True,
                 keep: bool = False, progress: Progress) -> dict[str, Any]:
    """Clone the dataset (on Citus: take it), measure every job, then (with `daily`) add a day and
    measure again."""
    world = dataset.world
    if dataset.citus is not None:
        measured = dataset.name
        progress(f"measuring {dataset.name} in place (Citus: no template clone); it is used up")
        forget_dataset(server, dataset.name)
        url = dataset.url
    else:
        measured = f"{dataset.name}_run"
        progress(f"cloning {dataset.name}")
        url = create_database(server, measured, template=dataset.name)
    engine = migrated_engine(url)
    settings = PipelineSettings(_env_file=None)
    load_before = round(os.getloadavg()[0], 2)
    try:
        with tempfile.TemporaryDirectory(prefix="rewards-bench-") as tmp:
            workdir = Path(tmp)
            measures = measure_jobs(engine, url, jobs, world.as_of, workdir, settings, progress)
            result: dict[str, Any] = {
                "users": world.users, "world": world.as_json(), "dataset": dataset.counts,
                "shape": drawn_shape(world),
                "generate_seconds": dataset.generate_seconds, "jobs": [m.as_json() for m in measures],
                "engine": dataset.citus.describe() if dataset.citus else "PostgreSQL",
                # other work on the machine skews timings: the 1-minute load average before and at the end
                "load_average_before": load_before,
                "load_average": round(os.getloadavg()[0], 2),
            }
            if daily:
                with _citus_sample_statements(dataset.citus is not None):
                    result["daily"] = measure_daily(engine, url, jobs, world, workdir, settings, measures,
                                                    progress)
                result["daily"]["load_average"] = round(os.getloadavg()[0], 2)
    finally:
        engine.dispose()
        if not keep:
            drop_database(server, measured, citus=dataset.citus)
    return result


class _CitusSampleQueries(Queries):
    """cli/sample_data.sql with advance_relationships taken from bench/daily.sql (see there)."""

    def raw(self, name: str) -> str:
        if name == "advance_relationships":
            return _daily.raw("advance_relationships_citus")
        return super().raw(name)


@contextmanager
def _citus_sample_statements(citus: bool) -> Iterator[None]:
    """On Citus, sample_data.advance with the one statement Citus refuses replaced (bench only: the
    app's own code is not the sample generator's)."""
    if not citus:
        yield
        return
    original = sample_data._queries
    sample_data._queries = _CitusSampleQueries(sample_data.__file__)
    try:
        yield
    finally:
        sample_data._queries = original


def measure_daily(engine: Engine, url: str, jobs: list[str], world: World, workdir: Path, settings: RuleSettings,
                  first_runs: list[JobMeasure], progress: Progress) -> dict[str, Any]:
    """Add one day of the world's activity and of changes to history, then run every job at as_of + 1
    day against its exact daily bound."""
    next_day = world.as_of + timedelta(days=1)
    progress("daily: adding one day of data")
    before = sample_data.count_rows(engine)
    started = time.monotonic()
    advance_world(engine, world, next_day)
    changed = change_history(engine, world, next_day)
    after = sample_data.count_rows(engine)
    added = {table: after[table] - before.get(table, 0) for table in after}
    first_by_job = {m.job: m.first.seconds for m in first_runs}
    runs = []
    for job in jobs:
        bound_run = None
        if has_bound(job):
            progress(f"daily: {job}: exact daily bound")
            bound_run = run_bound(engine, job, settings, next_day)
            vacuum(engine, _BOUND_WRITES.get(job, ()))
        progress(f"daily: {job}")
        run = run_cli(url, job, next_day, workdir, engine)
        vacuum(engine, _JOB_WRITES.get(job, ()))
        first = first_by_job.get(job)
        to_bound = run.seconds / bound_run.seconds if bound_run and bound_run.seconds > 0 else None
        runs.append({"job": job, "run": asdict(run), "bound": asdict(bound_run) if bound_run else None,
                     "to_bound": _round(to_bound), "to_first": _round(run.seconds / first) if first else None,
                     "target": None if to_bound is None else to_bound <= MAX_DAILY_TO_BOUND})
    return {"as_of": next_day.isoformat(), "added": added, "changed": changed,
            "advance_seconds": round(time.monotonic() - started, 1), "jobs": runs}


def change_history(engine: Engine, world: World, next_day: datetime) -> dict[str, int]:
    """bench/daily.sql: refunds of rewarded payments, FAILED turned PAID, late payments, redemptions."""
    params = {"as_of": world.as_of, "next_day": next_day, "changes": max(5, world.users // 5000)}
    changed = {}
    with engine.begin() as conn:
        for name in ("refund_rewarded_payments", "corrected_payments", "failed_turned_paid", "late_payments",
                     "redemptions"):
            changed[name] = conn.execute(_daily[name], params).rowcount
    vacuum(engine, ("user_subscription_payments", "user_point_transactions", "user_point_balances"))
    return changed
