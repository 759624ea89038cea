"""The runner is the one place that says how a run ended: a run the database does not even let start
is FAILED, counted in the metrics and logged there, with no run id (nothing was recorded)."""
from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import REGISTRY

import core.metrics  # noqa: F401 (a process counts its runs where it serves /metrics: core.metrics loaded)
from core.db import make_engine
from core.runner import run_job
from tests.unit.conftest import NO_DATABASE_URL


def failed_runs_counted(job: str) -> float:
    return REGISTRY.get_sample_value("rewards_job_runs_total", {"job": job, "status": "FAILED"}) or 0.0


def test_a_run_the_database_does_not_let_start_is_failed_counted_and_has_no_run_id():
    from jobs import JOBS, load_settings

    job = JOBS["expire-pending"]
    counted_before = failed_runs_counted(job.name)
    engine = make_engine(NO_DATABASE_URL)

    result = run_job(job, settings=load_settings(database_url=NO_DATABASE_URL), engine=engine,
                     as_of=datetime(2026, 6, 1, tzinfo=timezone.utc), trigger="schedule")

    assert (result.status, result.run_id) == ("FAILED", None)
    assert "unit tests have no database" in (result.error or "")
    assert failed_runs_counted(job.name) == counted_before + 1
