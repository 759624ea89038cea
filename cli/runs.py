"""Reading `job_runs` for people: the latest runs per job, filtered history, one run whole."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.sql import Fetch, Queries

if TYPE_CHECKING:
    from sqlalchemy import Engine

_queries = Queries(__file__)

STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "ABANDONED")


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
