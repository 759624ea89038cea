"""Reliability (issue 14): dead runs taken over (at once here, after the lease on their row elsewhere),
records that agree when a run loses its lease, a reconcile that waits for the ledger writers, timeouts
and stop signals that reach a blocked statement, the clock check, checks of settings and inputs at
start, and a daemon whose stuck loop fails /healthz."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text

from core import daemon as daemon_module
from core import runs, startup
from core.daemon import Daemon
from core.db import make_engine
from core.job import Batch, Job, RunContext
from core.runner import run_job
from core.runs import HOST, AlreadyRunning
from core.settings import ConfigError
from jobs import load_settings
from tests.builders import utc
from tests.integration.test_daemon import (add_pending_relationships, daemons,  # noqa: F401 (fixture)
                                           quiet_schedules, runs_of, status_counts, wait_until)

AS_OF = utc(2026, 6, 1)
REPO = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def add_running_run(engine: Any, job: str, *, host: str = HOST, pid: int, heartbeat_seconds_ago: float = 0,
                    lease_seconds: int = 300, scheduled_for: datetime | None = None) -> int:
    with engine.begin() as conn:
        return conn.execute(text(
            "INSERT INTO public.job_runs (job, trigger, as_of, scheduled_for, status, host, pid, lease_seconds,"
            " heartbeat_at) VALUES (:job, 'schedule', :as_of, :scheduled_for, 'RUNNING', :host, :pid, :lease,"
            " clock_timestamp() - make_interval(secs => :ago)) RETURNING id"),
            {"job": job, "as_of": AS_OF, "scheduled_for": scheduled_for, "host": host, "pid": pid,
             "lease": lease_seconds, "ago": heartbeat_seconds_ago}).scalar_one()


def run_row(engine: Any, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM public.job_runs WHERE id = :id"), {"id": run_id}).one()


def claim(engine: Any, job: str = "expire-pending", *, lease_seconds: int = 300,
          scheduled_for: datetime | None = None) -> int:
    return runs.claim(engine, job=job, trigger="manual", as_of=AS_OF, scheduled_for=scheduled_for, dry_run=False,
                      settings={}, lease_seconds=lease_seconds)


# ── takeover ─────────────────────────────────────────────────────────────────

def test_a_dead_run_of_this_host_is_taken_over_at_once(engine):
    dead = add_running_run(engine, "expire-pending", pid=dead_pid())

    mine = claim(engine)

    assert run_row(engine, dead).status == "ABANDONED"
    assert run_row(engine, dead).error.startswith("process gone")
    assert run_row(engine, mine).status == "RUNNING"


def test_a_run_with_this_process_pid_that_it_did_not_claim_is_a_dead_predecessors(engine):
    """A restarted container's daemon often has the pid of the one that died (pid 1)."""
    predecessor = add_running_run(engine, "expire-pending", pid=os.getpid())

    claim(engine)

    assert run_row(engine, predecessor).status == "ABANDONED"


def test_a_live_run_of_this_host_is_not_taken_over(engine):
    alive = add_running_run(engine, "expire-pending", pid=os.getppid())

    with pytest.raises(AlreadyRunning):
        claim(engine)
    assert run_row(engine, alive).status == "RUNNING"


def test_a_dead_scheduled_run_frees_its_tick_at_once(engine):
    tick = utc(2026, 6, 1, 0, 5)
    add_running_run(engine, "expire-pending", pid=dead_pid(), scheduled_for=tick)

    assert claim(engine, scheduled_for=tick)  # not TickTaken


@pytest.mark.parametrize("row_lease, heartbeat_ago, taken", [
    (3600, 400, False),  # the claimer's 300 s would take it; the row's hour does not
    (3600, 3700, True),
    (60, 90, True),      # the claimer's 300 s would wait; the row's minute has passed
    (60, 30, False),
])
def test_a_run_of_another_host_is_taken_over_after_the_lease_on_its_row(engine, row_lease, heartbeat_ago, taken):
    other = add_running_run(engine, "expire-pending", host="other-host", pid=os.getpid(),
                            heartbeat_seconds_ago=heartbeat_ago, lease_seconds=row_lease)
    if taken:
        claim(engine, lease_seconds=300)
        assert run_row(engine, other).status == "ABANDONED"
    else:
        with pytest.raises(AlreadyRunning):
            claim(engine, lease_seconds=300)
        assert run_row(engine, other).status == "RUNNING"


def test_the_claimers_lease_is_recorded_on_its_row(engine):
    assert run_row(engine, claim(engine, lease_seconds=1234)).lease_seconds == 1234


@pytest.mark.slow
def test_the_command_line_takes_over_a_dead_run_of_this_host_at_once(cli, engine):
    add_pending_relationships(engine, 3)
    dead = add_running_run(engine, "expire-pending", host=socket.gethostname(), pid=dead_pid())

    done = cli("run", "expire-pending", "--as-of", "2026-06-01")

    assert done.returncode == 0, done.stderr
    assert "already running" not in done.stderr
    assert run_row(engine, dead).status == "ABANDONED"
    assert status_counts(engine) == {"EXPIRED": 3}


# ── lease lost: records agree ───────────────────────────────────────────────

def _counting_job(batches: int, *, between: Any = None) -> Job:
    """`batches` batches, each expiring one PENDING relationship and counting it in the stats."""

    def run(ctx: RunContext) -> None:
        def step(conn, after):
            number = (after or 0) + 1
            expired = conn.execute(text(
                "UPDATE public.user_referral_relationships SET status = 'EXPIRED', expired_at = :as_of"
                " WHERE id = (SELECT id FROM public.user_referral_relationships WHERE status = 'PENDING'"
                " ORDER BY id LIMIT 1) RETURNING id"), {"as_of": ctx.as_of}).rowcount
            ctx.count("relationships_expired", expired)
            if between:
                between(number)
            return Batch(next_after=number if number < batches else None, items=expired)

        ctx.batches(step)

    return Job(name="expire-pending", run=run)


def _expired(engine: Any) -> int:
    return status_counts(engine).get("EXPIRED", 0)


def test_a_run_taken_over_after_its_last_batch_ends_abandoned_not_succeeded(engine, make_settings):
    add_pending_relationships(engine, 3)

    result = run_job(_counting_job(3), settings=make_settings(), engine=engine, as_of=AS_OF,
                     progress=lambda **kw: kw["batches"] == 3 and _force_takeover(engine))

    assert result.status == "ABANDONED"
    row = run_row(engine, result.run_id)
    assert row.status == "ABANDONED"
    assert row.stats["relationships_expired"] == _expired(engine) == 3  # every committed row is counted


def _force_takeover(engine: Any) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.job_runs SET status = 'ABANDONED', finished_at = clock_timestamp(),"
                          " error = 'taken over by the test' WHERE status = 'RUNNING'"))


def test_a_batch_longer_than_the_lease_keeps_its_run_and_its_rows_are_counted(engine, make_settings):
    add_pending_relationships(engine, 3)
    claims: list[str] = []

    def slow_second_batch(number: int) -> None:
        if number != 2:
            return

        def try_to_claim() -> None:  # blocks on the run's row until the batch commits, then sees its heartbeat
            try:
                claim(engine, lease_seconds=1)
                claims.append("claimed")
            except AlreadyRunning:
                claims.append("already running")

        time.sleep(1.5)  # the heartbeat committed by batch 1 is now older than the run's 1 s lease
        threading.Thread(target=try_to_claim).start()
        time.sleep(1.0)
        claims.append("batch done")

    result = run_job(_counting_job(3, between=slow_second_batch), settings=make_settings(run_lease_seconds=1),
                     engine=engine, as_of=AS_OF)
    wait_until(lambda: len(claims) == 2, what="the claimer's answer")

    assert claims == ["batch done", "already running"]
    assert result.status == "SUCCEEDED"
    assert run_row(engine, result.run_id).stats["relationships_expired"] == _expired(engine) == 3


def test_a_batch_that_rolls_back_is_not_counted(engine, make_settings):
    add_pending_relationships(engine, 3)

    def fail_in_the_second(number: int) -> None:
        if number == 2:
            raise RuntimeError("the database said no")

    result = run_job(_counting_job(3, between=fail_in_the_second), settings=make_settings(), engine=engine,
                     as_of=AS_OF)

    assert result.status == "FAILED"
    assert result.stats["relationships_expired"] == run_row(engine, result.run_id).stats["relationships_expired"]
    assert result.stats["relationships_expired"] == _expired(engine) == 1


# ── reconcile waits for the ledger writers ──────────────────────────────────

@pytest.mark.slow
def test_reconcile_waits_for_a_running_ledger_writer_then_exits_3_naming_it(cli, engine):
    writer = add_running_run(engine, "recurring-rewards", host="replica-7", pid=4242)
    started = time.monotonic()

    done = cli("run", "reconcile", "--as-of", "2026-06-01", env={"REWARDS_RECONCILE_WAIT_SECONDS": "2"})

    assert done.returncode == 3, done.stderr
    assert 2 <= time.monotonic() - started < 30
    line = done.stderr.strip().splitlines()[-1]
    assert "recurring-rewards" in line and "replica-7" in line and "pid 4242" in line and "since" in line
    assert f"run {writer}" in line
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM public.reconciliation_runs")).scalar() == 0
    [reconcile] = runs_of(engine, "reconcile")
    assert reconcile.status == "SKIPPED"


def test_expire_pending_running_does_not_hold_reconcile_back(engine, make_settings):
    from jobs import JOBS

    add_running_run(engine, "expire-pending", host="replica-7", pid=4242)
    result = run_job(JOBS["reconcile"], settings=make_settings(reconcile_wait_seconds=0), engine=engine, as_of=AS_OF)
    assert result.status == "SUCCEEDED"


def test_reconcile_goes_on_when_the_writer_ends_and_records_the_upstream_runs_it_saw(engine, make_settings):
    from jobs import JOBS

    writer = add_running_run(engine, "expire-points", host="replica-7", pid=4242)

    def finish_the_writer() -> None:
        time.sleep(1.5)
        with engine.begin() as conn:
            conn.execute(text("UPDATE public.job_runs SET status = 'SUCCEEDED', finished_at = clock_timestamp()"
                              " WHERE id = :id"), {"id": writer})

    threading.Thread(target=finish_the_writer).start()
    started = time.monotonic()
    result = run_job(JOBS["reconcile"], settings=make_settings(reconcile_wait_seconds=30), engine=engine, as_of=AS_OF)

    assert result.status == "SUCCEEDED", result.error
    assert 1.5 <= time.monotonic() - started < 20
    assert result.stats["upstream_runs"] == {"expire-points": {"run_id": writer, "status": "SUCCEEDED",
                                                               "as_of": AS_OF.isoformat()}}


def test_a_dead_writer_does_not_hold_reconcile_back(engine, make_settings):
    from jobs import JOBS

    add_running_run(engine, "level2-rewards", pid=dead_pid())
    result = run_job(JOBS["reconcile"], settings=make_settings(reconcile_wait_seconds=0), engine=engine, as_of=AS_OF)
    assert result.status == "SUCCEEDED", result.error


# ── timeouts ─────────────────────────────────────────────────────────────────

@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word; its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", [["health"], ["run", "expire-pending"], ["migrate"]])
def test_a_server_that_never_answers_fails_within_the_connect_timeout(cli, silent_server, command):
    url = f"postgresql://rewards:canary-password@127.0.0.1:{silent_server}/rewards"
    started = time.monotonic()

    done = cli(*command, env={"DATABASE_URL": url, "REWARDS_DB_CONNECT_TIMEOUT_SECONDS": "2"}, timeout=60)

    assert time.monotonic() - started < 15
    assert done.returncode == 1
    assert done.stderr.startswith("error: database: ") and done.stderr.count("\n") == 1, done.stderr
    assert "canary-password" not in done.stdout + done.stderr


def _session_settings(url: str, **env: str) -> dict[str, str]:
    from core.db import engine_from_settings

    settings = load_settings(database_url=url, **env)
    engine = engine_from_settings(settings)
    try:
        with engine.connect() as conn:
            return {name: conn.execute(text(f"SHOW {name}")).scalar() for name in
                    ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "TimeZone")}
    finally:
        engine.dispose()


def test_sessions_start_with_the_timeouts_of_the_settings(database_url):
    shown = _session_settings(database_url, db_statement_timeout_seconds=900, db_lock_timeout_seconds=60,
                              db_idle_in_transaction_timeout_seconds=300)
    assert shown == {"statement_timeout": "15min", "lock_timeout": "1min",
                     "idle_in_transaction_session_timeout": "5min", "TimeZone": "UTC"}


def test_options_in_the_url_and_pgoptions_win_over_the_settings(database_url, monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=7s -c statement_timeout=8s")
    separator = "&" if "?" in database_url else "?"
    shown = _session_settings(database_url + separator + "options=-c%20statement_timeout%3D1234")
    assert shown["statement_timeout"] == "1234ms"  # the URL's
    assert shown["lock_timeout"] == "7s"  # PGOPTIONS'
    assert shown["TimeZone"] == "UTC"


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_interrupts_a_run_blocked_on_a_lock(database_url, engine, tmp_path, stop_signal):
    add_pending_relationships(engine, 5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    env.update({"DATABASE_URL": database_url, "REWARDS_LOG_FORMAT": "json", "REWARDS_DB_LOCK_TIMEOUT_SECONDS": "600",
                "REWARDS_REPORTS_DIR": str(tmp_path / "reports")})
    with make_engine(database_url).connect() as holder:
        holder.execute(text("LOCK TABLE public.user_referral_relationships IN EXCLUSIVE MODE"))
        process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), "run", "expire-pending",
                                    "--as-of", "2026-06-01"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        wait_until(lambda: _waiting_on_a_lock(engine), what="the run blocked on the lock", timeout=30)
        started = time.monotonic()
        process.send_signal(stop_signal)
        out, err = process.communicate(timeout=30)
        took = time.monotonic() - started
        holder.rollback()

    assert took < 5  # the grace (2 s), then the statement is cancelled
    assert process.returncode == 1
    [run] = runs_of(engine)
    assert run.status == "FAILED"
    assert status_counts(engine) == {"PENDING": 5}


def _waiting_on_a_lock(engine: Any) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rewards-jobs'"
            " AND wait_event_type = 'Lock' AND datname = current_database()")).scalar())


# ── clock skew ───────────────────────────────────────────────────────────────

def test_a_host_clock_40_s_fast_is_refused_naming_both_clocks(engine):
    def fast_clock() -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=40)

    with pytest.raises(ConfigError, match=r"^REWARDS_MAX_CLOCK_SKEW_SECONDS: this host's clock \(.+\) differs "
                                          r"from the database's \(.+\) by \+4\d\.\d s"):
        startup.check_clock_skew(engine, 5, host_clock=fast_clock)


def test_a_host_clock_within_the_limit_passes(engine):
    startup.check_clock_skew(engine, 5, host_clock=lambda: datetime.now(timezone.utc) - timedelta(seconds=3))


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.slow
@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime (Debian package faketime) is not installed")
@pytest.mark.parametrize("command", [["run", "expire-pending"], ["run-all", "--dry-run"], ["daemon"]])
def test_a_process_whose_clock_is_40_s_fast_refuses_to_run(cli, engine, command):
    fast = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "+40s", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "REWARDS_HTTP_PORT": "0"}

    done = cli(*command, env=fast, timeout=60)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: REWARDS_MAX_CLOCK_SKEW_SECONDS: this host's clock")
    assert done.stderr.count("\n") == 1
    assert runs_of(engine) == []


# ── settings and inputs checked at start ────────────────────────────────────


@pytest.mark.parametrize("make_bad", ["file", "inside a file"])
@pytest.mark.parametrize("command", [["run", "reconcile"], ["run-all"], ["daemon"]])
def test_a_reports_folder_that_cannot_take_files_is_refused_at_start(cli, engine, tmp_path, make_bad, command):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    reports = blocker if make_bad == "file" else blocker / "reports"

    done = cli(*command, env={"REWARDS_REPORTS_DIR": str(reports), "REWARDS_HTTP_PORT": "0"}, timeout=60)

    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: REWARDS_REPORTS_DIR: ") and str(reports) in done.stderr
    assert done.stderr.count("\n") == 1
    assert runs_of(engine) == []


def test_a_job_that_writes_no_report_runs_whatever_the_reports_folder(cli, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert cli("run", "expire-pending", env={"REWARDS_REPORTS_DIR": str(blocker)}).returncode == 0


def test_a_database_with_an_unknown_newer_migration_is_not_healthy(cli, engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO public.rewards_schema_migrations (version, name, checksum)"
                          " VALUES ('999', 'from_the_future', 'x')"))

    done = cli("health")

    assert done.returncode == 1
    assert "999_from_the_future" in done.stderr and done.stderr.count("\n") == 1


# ── the daemon's health ──────────────────────────────────────────────────────

def test_healthz_fails_when_the_scheduler_loop_is_stuck(engine, make_settings, monkeypatch):
    monkeypatch.setattr(daemon_module, "LOOP_STALL_SECONDS", 1.0)
    stop = threading.Event()
    daemon = Daemon(make_settings(), engine, jobs=(), stop=stop)  # a loop with no job to run
    serving = threading.Thread(target=daemon.serve)
    serving.start()
    try:
        wait_until(lambda: daemon.health()[0], what="a healthy daemon")
        daemon.scheduler.pause()  # the loop stops dispatching: nothing beats any more
        healthy, detail = wait_until(lambda: (lambda h: h if not h[0] else None)(daemon.health()),
                                     what="an unhealthy daemon", timeout=10)
        assert detail["scheduler"].startswith("stuck: no heartbeat of the scheduler loop")
        assert detail["database"] == "ok"
        daemon.scheduler.resume()
        wait_until(lambda: daemon.health()[0], what="healthy again", timeout=10)
    finally:
        stop.set()
        serving.join(timeout=30)


@pytest.mark.slow
def test_a_periodic_check_catches_up_a_run_another_replica_left_behind(daemons, database_url, engine):
    """A RUNNING row of another host blocks the start-up catch-up; once its (short) lease ends, the
    periodic check takes it over and runs the job, without waiting for the next tick."""
    add_pending_relationships(engine, 3)
    add_running_run(engine, "expire-pending", host="gone-replica", pid=1, lease_seconds=4)
    daemon = daemons(database_url, REWARDS_CATCH_UP_CHECK_SECONDS="2",
                     **quiet_schedules(**{"expire-pending": "5 0 * * *"}))

    wait_until(lambda: status_counts(engine) == {"EXPIRED": 3} and runs_of(engine)[-1].status == "SUCCEEDED",
               what="the job caught up", timeout=40)
    statuses = [(r.trigger, r.status) for r in runs_of(engine)]
    assert statuses[0] == ("schedule", "ABANDONED") and statuses[-1] == ("catch-up", "SUCCEEDED")
    assert daemon.terminate()[0] == 0
