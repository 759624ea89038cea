"""Reading `job_runs` for people: the latest runs per job (`jobs`), filtered history (`history`), one
run whole (`show`); each as a table that fits the terminal, or with `--json` as one document."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cli.summary import describe_stats, status_label, took
from cli.tables import Column, print_table
from cli.terminal import print_json
from core.clock import when
from core.sql import Fetch, Queries

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from core.runs import LastRun

_queries = Queries(__file__)


def latest_successes(fetch: Fetch) -> dict[str, Any]:
    """The latest real success of each job, whole (core.runs.last_successes has the daemon's maxima)."""
    return {row.job: row for row in fetch(_queries.raw("latest_success_per_job"))}


def history(engine: Engine, *, job: str | None, status: str | None, since: datetime | None,
            limit: int) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(_queries["history"],
                                 {"job": job, "status": status, "since": since, "limit": limit}))


def one_run(engine: Engine, run_id: int) -> Any | None:
    with engine.connect() as conn:
        return conn.execute(_queries["one_run"], {"run_id": run_id}).one_or_none()


# ── jobs ─────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class JobLine:
    """One job as `jobs` lists it: its schedule (None: off), next fire, latest real success, latest run."""
    name: str
    schedule: str | None
    next_fire: datetime | None
    last_success: Any | None
    last_run: LastRun | None


def print_jobs(lines: list[JobLine], *, as_json: bool = False) -> None:
    if as_json:
        print_json({"jobs": [_job_document(line) for line in lines]})
        return
    rows = [[line.name, line.schedule or "off", when(line.next_fire, seconds=False) or "never",
             _success(line.last_success), *_last_run(line.last_run)] for line in lines]
    # Kept at 80 columns: the job, its last run and status, its last success and next fire.
    print_table([Column("job"), Column("schedule (UTC)", drop=3), Column("next fire (UTC)", drop=1),
                 Column("last success (UTC)", drop=2), Column("last run"), Column("status"),
                 Column("trigger", drop=5), Column("as of (UTC)", drop=4)], rows)


def _success(run: Any | None) -> str:
    return f"{when(run.finished_at, seconds=False)} run {run.id}" if run else "never"


def _last_run(run: LastRun | None) -> list[Any]:
    if run is None:
        return ["never run", "", "", ""]
    return [f"run {run.id}", status_label(run.status, run.dry_run), run.trigger, when(run.as_of, seconds=False)]


def _job_document(line: JobLine) -> dict[str, Any]:
    success, run = line.last_success, line.last_run
    return {
        "job": line.name, "schedule": line.schedule, "next_fire": line.next_fire,
        "last_success": None if success is None else {
            "run_id": success.id, "finished_at": success.finished_at, "as_of": success.as_of,
            "trigger": success.trigger},
        "last_run": None if run is None else {
            "run_id": run.id, "status": run.status, "dry_run": run.dry_run, "trigger": run.trigger,
            "as_of": run.as_of, "started_at": run.started_at, "finished_at": run.finished_at},
    }


# ── history and show ─────────────────────────────────────────────────────────

def run_document(run: Any) -> dict[str, Any]:
    """A run as `history --json` and `show --json` give it (show's row adds settings and heartbeat)."""
    document = {
        "run_id": run.id, "job": run.job, "status": run.status, "dry_run": run.dry_run, "trigger": run.trigger,
        "as_of": run.as_of, "scheduled_for": run.scheduled_for, "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": None if run.duration is None else run.duration.total_seconds(),
        "host": run.host, "pid": run.pid, "error": run.error, "stats": run.stats or {},
    }
    for extra in ("heartbeat_at", "settings"):
        if extra in run._fields:
            document[extra] = getattr(run, extra)
    return document


def print_history(found: list[Any], *, as_json: bool = False) -> None:
    if as_json:
        print_json({"runs": [run_document(run) for run in found]})
        return
    rows = [[run.id, run.job, status_label(run.status, run.dry_run), run.trigger, when(run.as_of, seconds=False),
             when(run.started_at, seconds=False), took(run.duration), f"{run.host}:{run.pid}", _outcome(run)]
            for run in found]
    # Kept at 80 columns: the run, its job and status, as of, how long it took, and what it did.
    print_table([Column("run"), Column("job"), Column("status"), Column("trigger", drop=3),
                 Column("as of (UTC)", drop=1), Column("started (UTC)", drop=4), Column("took", drop=2),
                 Column("host:pid", drop=5), Column("outcome", flex=True)], rows)


def _outcome(run: Any) -> str:
    return f"error: {run.error}" if run.error else describe_stats(run.stats, job=run.job, brief=True)
