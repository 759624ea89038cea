"""The daemon's HTTP endpoints against a database: /metrics reads the last success of each job from
job_runs; /healthz needs a running scheduler and an answering database. (The server's edges:
tests/unit/test_http.py.)"""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from core.daemon import Daemon
from core.db import make_engine
from jobs import PIPELINE
from tests.builders import utc
from tests.unit.test_http import UNREACHABLE, get, serve  # noqa: F401 (fixture)


def last_success(exposition: str, job: str) -> float:
    [value] = re.findall(rf'^rewards_job_last_success_timestamp_seconds{{job="{job}"}} (\S+)$', exposition, re.M)
    return float(value)


def add_run(conn: Any, job: str, status: str, finished_at: Any, *, dry_run: bool = False) -> None:
    conn.execute(text(
        "INSERT INTO public.job_runs (job, trigger, as_of, status, dry_run, finished_at, host, pid)"
        " VALUES (:job, 'manual', :finished_at, :status, :dry_run, :finished_at, 'test', 1)"),
        {"job": job, "status": status, "dry_run": dry_run, "finished_at": finished_at})


def test_metrics_report_each_jobs_last_non_dry_success_from_job_runs(serve, engine):
    last = utc(2026, 6, 1, 0, 5, 7)
    with engine.begin() as conn:
        add_run(conn, "expire-pending", "SUCCEEDED", last - timedelta(days=1))
        add_run(conn, "expire-pending", "SUCCEEDED", last)
        add_run(conn, "expire-pending", "SUCCEEDED", last + timedelta(hours=1), dry_run=True)
        add_run(conn, "expire-pending", "FAILED", last + timedelta(hours=2))
        add_run(conn, "recurring-rewards", "FAILED", last)
    server = serve(on_engine=engine)

    status, content_type, body = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert "# TYPE rewards_job_last_success_timestamp_seconds gauge" in body
    assert last_success(body, "expire-pending") == last.timestamp()
    assert last_success(body, "recurring-rewards") == 0.0  # never succeeded


def health_after_one_answer(daemon: Daemon) -> tuple[bool, dict[str, str]]:
    daemon.database.ask()
    try:
        return daemon.health()
    finally:
        daemon.database.close()


def test_daemon_health_needs_a_running_scheduler_and_an_answering_database(make_settings, engine):
    settings = make_settings()
    assert health_after_one_answer(Daemon(settings, engine, jobs=PIPELINE)) == (
        False, {"scheduler": "not started", "database": "ok"})
    unreachable = make_engine(UNREACHABLE)
    healthy, detail = health_after_one_answer(Daemon(settings, unreachable, jobs=PIPELINE))
    assert not healthy and detail["database"].startswith("unreachable: OperationalError")
    unreachable.dispose()


def test_daemon_health_before_the_first_answer_of_the_database_is_unhealthy(make_settings, engine):
    daemon = Daemon(make_settings(), engine, jobs=PIPELINE)
    assert daemon.health() == (False, {"scheduler": "not started", "database": "not checked yet"})
    daemon.database.close()
