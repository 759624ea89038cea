"""The `job_runs` table: claiming a run, heartbeats (the lease), finishing, reading history.

Exclusion is the database's: a partial unique index allows one RUNNING row per job, another one
claimed run per scheduled tick. A run whose heartbeat is older than the lease is marked ABANDONED
and taken over.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from core.sql import Queries

_queries = Queries(__file__)

HOST = socket.gethostname()


@dataclass(frozen=True)
class Holder:
    run_id: int
    host: str
    pid: int
    since: datetime
    trigger: str


class AlreadyRunning(Exception):
    """Another run of the job holds it (exit code 3)."""

    def __init__(self, job: str, holder: Holder) -> None:
        self.job = job
        self.holder = holder
        super().__init__(
            f"{job} is already running elsewhere: run {holder.run_id} ({holder.trigger}) "
            f"on host {holder.host} pid {holder.pid}, since {holder.since.isoformat()}"
        )


class TickTaken(Exception):
    """Another replica already claimed (or finished) this scheduled tick."""


class LeaseLost(Exception):
    """This run's lease expired and another process took the job over."""


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def claim(
    engine: Engine,
    *,
    job: str,
    trigger: str,
    as_of: datetime,
    scheduled_for: datetime | None,
    dry_run: bool,
    settings: dict[str, Any],
    lease_seconds: int,
) -> int:
    """Insert this run as RUNNING and return its id, or raise AlreadyRunning / TickTaken."""
    params = {
        "job": job, "trigger": trigger, "as_of": as_of, "scheduled_for": scheduled_for,
        "dry_run": dry_run, "settings": _json(settings), "host": HOST, "pid": os.getpid(),
        "lease_seconds": lease_seconds,
    }
    for _attempt in range(3):
        with engine.begin() as conn:
            conn.execute(_queries["abandon_stale_run"], params)
            run_id = conn.execute(_queries["claim_run"], params).scalar()
            if run_id is not None:
                return int(run_id)
            tick_taken = scheduled_for is not None and conn.execute(_queries["tick_taken"], params).scalar()
            holder = conn.execute(_queries["running_run"], params).one_or_none()
        if tick_taken:  # checked first: a replica running this very tick is not "busy", the tick is just taken
            raise TickTaken(f"{job} tick {scheduled_for.isoformat()} was already claimed by another replica")
        if holder is not None:
            raise AlreadyRunning(job, Holder(holder.id, holder.host, holder.pid, holder.started_at, holder.trigger))
        # The holder finished between our insert and our look: try again.
    raise RuntimeError(f"could not claim a run of {job}")


def record_skipped(
    engine: Engine, *, job: str, trigger: str, as_of: datetime, scheduled_for: datetime | None,
    dry_run: bool, settings: dict[str, Any], reason: str,
) -> int:
    with engine.begin() as conn:
        return int(conn.execute(_queries["record_skipped"], {
            "job": job, "trigger": trigger, "as_of": as_of, "scheduled_for": scheduled_for,
            "dry_run": dry_run, "settings": _json(settings), "error": reason,
            "host": HOST, "pid": os.getpid(),
        }).scalar_one())


def heartbeat(conn: Connection, run_id: int, stats: dict[str, Any]) -> None:
    """Renew the lease inside the caller's transaction; raise LeaseLost if the run was taken over."""
    if conn.execute(_queries["heartbeat"], {"run_id": run_id, "stats": _json(stats)}).first() is None:
        raise LeaseLost(f"run {run_id} lost its lease and was taken over")


def finish(engine: Engine, run_id: int, *, status: str, stats: dict[str, Any], error: str | None) -> bool:
    """Record the run's end; False when the run had already been taken over."""
    with engine.begin() as conn:
        row = conn.execute(_queries["finish_run"], {
            "run_id": run_id, "status": status, "stats": _json(stats), "error": error,
        }).first()
    return row is not None


def last_runs(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.job: row for row in conn.execute(_queries["last_run_per_job"])}


def last_successes(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.job: row for row in conn.execute(_queries["last_success_per_job"])}


def recent_runs(engine: Engine, *, job: str | None = None, limit: int = 20) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(_queries["recent_runs"], {"job": job, "limit": limit}))
