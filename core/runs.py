"""The `job_runs` table: claiming a run, heartbeats (the lease), finishing, reading history.

Exclusion is the database's: a partial unique index allows one RUNNING row per job, another one
claimed run per scheduled tick. A RUNNING run is taken over (marked ABANDONED) at once when it ran on
this host and its process is gone, else once its heartbeat is older than the lease recorded on its
own row (`lease_seconds`, the claimer's REWARDS_RUN_LEASE_SECONDS).
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from core.sql import Fetch, Queries

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Row

    from core.job import Stats

_queries = Queries(__file__)

HOST = socket.gethostname()
_claimed_here: set[tuple[str, int]] = set()  # (database, run id) this very process claimed
# The claim token of each run this process claimed: a secret only the claimer knows (the row keeps its
# hash). Migration 025 lets a non-owner role renew or finish a run only in a transaction that proves it
# (the transaction-local setting rewards.claim_token), so no other session can mark a run it did not
# claim SUCCEEDED, rewrite its stats, or write its reconcile rows.
_claim_tokens: dict[tuple[str, int], str] = {}


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


class StillRunning(Exception):
    """A job waited for is still RUNNING after the wait (exit code 3)."""

    def __init__(self, waiter: str, job: str, holder: Holder, waited: float) -> None:
        self.job = job
        self.holder = holder
        super().__init__(
            f"{waiter} waited {waited:.0f} s for {job} to finish: run {holder.run_id} ({holder.trigger}) "
            f"is still running on host {holder.host} pid {holder.pid}, since {holder.since.isoformat()}"
        )


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (a zombie, killed but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _database_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def holder_alive(engine: Engine, run_id: int, pid: int) -> bool:
    """Whether the process of a run of this host still runs. A run with this process's own pid that
    this process did not claim is a predecessor's: a restarted container's daemon is often pid 1 again."""
    if pid == os.getpid():
        return (_database_of(engine), run_id) in _claimed_here
    return process_alive(pid)


def _abandon_dead_runs_here(conn: Connection, params: dict[str, object]) -> None:
    """Mark ABANDONED a RUNNING run of this job whose process on this host is gone."""
    for row in conn.execute(_queries["running_on_host"], params):
        if not holder_alive(conn.engine, row.id, row.pid):
            conn.execute(_queries["abandon_dead_run"], {**params, "dead_run_id": row.id, "dead_pid": row.pid})


def _json(value: object) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def claim(
    engine: Engine,
    *,
    job: str,
    trigger: str,
    as_of: datetime,
    scheduled_for: datetime | None,
    dry_run: bool,
    settings: dict[str, str],
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
            _abandon_dead_runs_here(conn, params)
            conn.execute(_queries["abandon_stale_run"], params)
            token = secrets.token_hex(32)
            _prove_claim(conn, token)
            run_id = conn.execute(_queries["claim_run"], params).scalar()
            if run_id is not None:
                _claimed_here.add((_database_of(engine), int(run_id)))
                _claim_tokens[(_database_of(engine), int(run_id))] = token
                return int(run_id)
            tick_taken = scheduled_for is not None and conn.execute(_queries["tick_taken"], params).scalar()
            holder = conn.execute(_queries["running_run"], params).one_or_none()
        # checked first: a replica running this very tick is not "busy", the tick is just taken
        if tick_taken and scheduled_for is not None:
            raise TickTaken(f"{job} tick {scheduled_for.isoformat()} was already claimed by another replica")
        if holder is not None:
            raise AlreadyRunning(job, Holder(holder.id, holder.host, holder.pid, holder.started_at, holder.trigger))
        # The holder finished between our insert and our look: try again.
    raise RuntimeError(f"could not claim a run of {job}")


def record_skipped(
    engine: Engine, *, job: str, trigger: str, as_of: datetime, scheduled_for: datetime | None,
    dry_run: bool, settings: dict[str, str], reason: str,
) -> int:
    with engine.begin() as conn:
        return int(conn.execute(_queries["record_skipped"], {
            "job": job, "trigger": trigger, "as_of": as_of, "scheduled_for": scheduled_for,
            "dry_run": dry_run, "settings": _json(settings), "error": reason,
            "host": HOST, "pid": os.getpid(),
        }).scalar_one())


def _prove_claim(conn: Connection, token: str | None) -> None:
    """Show the claim token to the database for the rest of this transaction (migration 025)."""
    if token is not None:
        conn.execute(_queries["prove_claim"], {"token": token})


def _prove_own_run(conn: Connection, run_id: int) -> None:
    _prove_claim(conn, _claim_tokens.get((_database_of(conn.engine), run_id)))


def heartbeat(conn: Connection, run_id: int, stats: Stats) -> None:
    """Renew the lease inside the caller's transaction; raise LeaseLost if the run was taken over."""
    _prove_own_run(conn, run_id)
    if conn.execute(_queries["heartbeat"], {"run_id": run_id, "stats": _json(stats)}).first() is None:
        raise LeaseLost(f"run {run_id} lost its lease and was taken over")


def record_progress(conn: Connection, run_id: int, stats: Stats) -> None:
    """Store the stats at the end of a batch, in its transaction; raise LeaseLost if taken over."""
    _prove_own_run(conn, run_id)
    if conn.execute(_queries["record_progress"], {"run_id": run_id, "stats": _json(stats)}).first() is None:
        raise LeaseLost(f"run {run_id} lost its lease and was taken over")


def finish(engine: Engine, run_id: int, *, status: str, stats: Stats, error: str | None) -> bool:
    """Record the run's end; False when the run had already been taken over."""
    with engine.begin() as conn:
        return finish_in(conn, run_id, status=status, stats=stats, error=error)


def finish_in(conn: Connection, run_id: int, *, status: str, stats: Stats, error: str | None) -> bool:
    """Record the run's end inside the caller's transaction; False when the run had been taken over."""
    _prove_own_run(conn, run_id)
    row = conn.execute(_queries["finish_run"], {
        "run_id": run_id, "status": status, "stats": _json(stats), "error": error,
    }).first()
    return row is not None


def succeeded_runs(engine: Engine, job: str, run_ids: set[int]) -> set[int]:
    """Which of `run_ids` are runs of `job` that ended SUCCEEDED."""
    if not run_ids:
        return set()
    with engine.connect() as conn:
        return {int(row.id) for row in conn.execute(_queries["succeeded_runs"],
                                                    {"job": job, "run_ids": sorted(run_ids)})}


@dataclass(frozen=True)
class LastRun:
    """A job's latest run that really ran (`last_runs`): what `jobs` shows of it and the daemon reads."""

    job: str
    id: int
    trigger: str
    as_of: datetime
    status: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None


def last_runs(fetch: Fetch) -> dict[str, LastRun]:
    """The latest run of each job, by job: on the light connection of `jobs`, or an engine's
    (`core.connect.reading`)."""
    return {row.job: LastRun(**row._asdict()) for row in fetch(_queries.raw("last_run_per_job"))}


def last_successes(engine: Engine) -> dict[str, Row[Any]]:
    with engine.connect() as conn:
        return {row.job: row for row in conn.execute(_queries["last_success_per_job"])}


def last_invariant_violations(engine: Engine) -> dict[str, int] | None:
    """The latest successful run's `invariant_violations` stats (by kind), None when no run counted any."""
    with engine.connect() as conn:
        row = conn.execute(_queries["last_invariant_violations"]).first()
    return None if row is None else {str(kind): int(count) for kind, count in (row.by_kind or {}).items()}


def running_runs(engine: Engine, jobs: Sequence[str] | None = None) -> list[Row[Any]]:
    """RUNNING rows (of `jobs`, else all), each with `lease_expired`."""
    with engine.connect() as conn:
        return list(conn.execute(_queries["running_runs"], {"jobs": list(jobs) if jobs is not None else None}))


def takeable(engine: Engine, run: Row[Any]) -> bool:
    """Whether a RUNNING row would be taken over by a claim now (its process gone, or its lease out)."""
    return bool(run.lease_expired) or (run.host == HOST and not holder_alive(engine, run.id, run.pid))


def latest_runs_of(engine: Engine, jobs: Sequence[str]) -> dict[str, Row[Any]]:
    with engine.connect() as conn:
        return {row.job: row for row in conn.execute(_queries["latest_runs_of"], {"jobs": list(jobs)})}


def wait_until_none_running(
    engine: Engine, jobs: Sequence[str], *, waiter: str, timeout_seconds: float, stop: threading.Event,
    poll_seconds: float = 0.5, on_wait: Callable[[Row[Any]], None] | None = None,
) -> None:
    """Return once no run of `jobs` is RUNNING (dead runs do not count); raise StillRunning after
    `timeout_seconds`, or StopRequested-like `InterruptedError` when `stop` is set meanwhile."""
    deadline = time.monotonic() + timeout_seconds
    waited_from = time.monotonic()
    while True:
        alive = [run for run in running_runs(engine, jobs) if not takeable(engine, run)]
        if not alive:
            return
        first = alive[0]
        if time.monotonic() >= deadline:
            raise StillRunning(waiter, first.job, Holder(first.id, first.host, first.pid, first.started_at,
                                                         first.trigger), time.monotonic() - waited_from)
        if on_wait is not None:
            on_wait(first)
            on_wait = None  # say it once
        if stop.wait(min(poll_seconds, max(0.0, deadline - time.monotonic()))):
            raise InterruptedError(f"{waiter}: stopped on request while waiting for {first.job} to finish")
