"""Stops that beat the orchestrator's clock (issue 28, item 4): after SIGTERM a blocked `run` or the
daemon exits within 5 s whatever it waits on (a lock held by another session, a reconcile waiting for
a running upstream job, a database that hangs mid-statement, a log pipe whose reader is gone or
stalled), and `/healthz` answers within 2 s, 503, while the database hangs, without a thread piling
up per probe. Docker's default grace before SIGKILL is 10 s; the bounds are the specification's."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core import runs
from core.db import make_engine
from tests.integration.test_privileges import service_url  # noqa: F401 (fixture)
from tests.integration.test_daemon import (REPO, DaemonProcess, add_pending_relationships,  # noqa: F401 (fixture)
                                           blocked_in_fifth_batch, daemons, quiet_schedules, relationship_id,
                                           runs_of, status_counts, wait_until)

pytestmark = pytest.mark.slow

STOP_BOUND_SECONDS = 5.0
HEALTH_BOUND_SECONDS = 2.0


# ── a database that hangs ────────────────────────────────────────────────────

class HangingServer:
    """A TCP server that accepts connections and never answers: a database host that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"postgresql://rewards@127.0.0.1:{self.listener.getsockname()[1]}/rewards"
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for held in self._held:
            held.close()


class FreezableProxy:
    """A TCP proxy in front of the test's PostgreSQL. `freeze()` makes the database hang as a whole:
    nothing is forwarded any more in either direction, and new connections (a cancel request too) are
    accepted and never answered."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        socket_dir = url.query.get("host")  # the embedded server listens on a socket only
        self._upstream = ((socket.AF_UNIX, f"{socket_dir}/.s.PGSQL.{url.port or 5432}") if socket_dir
                          else (socket.AF_INET, (url.host or "127.0.0.1", url.port or 5432)))
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.url = url.difference_update_query(["host"]).set(host="127.0.0.1", port=port).render_as_string(
            hide_password=False)
        self.frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def _accept(self) -> None:
        while True:
            try:
                client = self.listener.accept()[0]
            except OSError:
                return
            self._sockets.append(client)
            if self.frozen.is_set():
                continue
            upstream = socket.socket(self._upstream[0])
            upstream.connect(self._upstream[1])
            self._sockets.append(upstream)
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():  # held back: the other side waits for it forever
                    if self._closed.wait(0.05):
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            if not self.frozen.is_set():
                target.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        for held in self._sockets:
            held.close()


@pytest.fixture
def hanging_server():
    server = HangingServer()
    yield server
    server.close()


@pytest.fixture
def proxy(database_url):
    proxy = FreezableProxy(database_url)
    yield proxy
    proxy.close()


# ── helpers ──────────────────────────────────────────────────────────────────

def waiting_on_a_lock(engine: Any) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rewards-jobs'"
            " AND wait_event_type = 'Lock' AND datname = current_database()")).scalar())


def cli_process(args: list[str], database_url: str, tmp_path: Path, **extra: str) -> tuple[subprocess.Popen, Path]:
    """`python scheduler.py ARGS` in its own process, its output in a file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_") and k != "PGOPTIONS"}
    env.update({"DATABASE_URL": database_url, "REWARDS_LOG_FORMAT": "json", "REWARDS_DB_LOCK_TIMEOUT_SECONDS": "600",
                "REWARDS_REPORTS_DIR": str(tmp_path / "reports"), "REWARDS_DATA_DIR": str(tmp_path / "data"), **extra})
    log = tmp_path / "cli.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, str(REPO / "scheduler.py"), *args], cwd=tmp_path, env=env,
                                   stdout=output, stderr=subprocess.STDOUT)
    return process, log


def seconds_to_exit_after_sigterm(process: subprocess.Popen, *, limit: float = 30) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return float("inf")
    return time.monotonic() - started


def actions_in(log: Path) -> list[str]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            found.append(json.loads(line).get("action"))
        except (json.JSONDecodeError, AttributeError):
            continue
    return found


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def timed_get(daemon: DaemonProcess, path: str) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    status, body = daemon.get(path)
    return status, json.loads(body), time.monotonic() - started


def pending_expiry_run_blocked_in_fifth_batch(engine: Any, blocker: Any) -> None:
    """100 expirable relationships, relationship 50 locked by `blocker`: a run in batches of 10
    commits four and waits inside its 5th."""
    add_pending_relationships(engine, 100)
    blocker.execute(text("SELECT 1 FROM public.user_referral_relationships WHERE id = :id FOR UPDATE"),
                    {"id": relationship_id(50)})


# ── a blocked `run` ──────────────────────────────────────────────────────────

@pytest.mark.parametrize("role", ["owner", "service role"])
def test_sigterm_ends_a_run_waiting_for_a_lock_within_5_s_as_a_stopped_run(database_url, engine, tmp_path, role,
                                                                           request):
    run_as = database_url if role == "owner" else request.getfixturevalue("service_url")  # docs/privileges.sql's
    add_pending_relationships(engine, 5)
    with make_engine(database_url).connect() as holder:
        holder.execute(text("LOCK TABLE public.user_referral_relationships IN EXCLUSIVE MODE"))
        process, log = cli_process(["run", "expire-pending", "--as-of", "2026-06-01"], run_as, tmp_path)
        wait_until(lambda: waiting_on_a_lock(engine), what="the run blocked on the lock", timeout=30)
        took = seconds_to_exit_after_sigterm(process)
        holder.rollback()

    assert took < STOP_BOUND_SECONDS, log.read_text()
    assert process.returncode == 1
    [run] = runs_of(engine)
    assert run.status == "FAILED" and run.error.startswith("stopped on request"), run.error
    assert status_counts(engine) == {"PENDING": 5}


def test_sigterm_ends_a_reconcile_waiting_for_a_running_upstream_job_within_5_s(database_url, engine, tmp_path):
    with engine.begin() as conn:  # an expire-points run alive on this host (this process): reconcile waits
        conn.execute(text("INSERT INTO public.job_runs (job, trigger, as_of, status, host, pid)"
                          " VALUES ('expire-points', 'manual', now(), 'RUNNING', :host, :pid)"),
                     {"host": runs.HOST, "pid": os.getpid()})
    process, log = cli_process(["run", "reconcile"], database_url, tmp_path)
    wait_until(lambda: "waiting_for_job" in actions_in(log), what="reconcile waiting for expire-points", timeout=30)

    took = seconds_to_exit_after_sigterm(process)

    assert took < STOP_BOUND_SECONDS, log.read_text()
    assert process.returncode == 1
    [reconcile] = [run for run in runs_of(engine) if run.job == "reconcile"]
    assert reconcile.status == "FAILED" and "stopped on request" in reconcile.error, reconcile.error


def test_sigterm_ends_a_run_whose_database_hangs_mid_statement_within_5_s(database_url, engine, proxy, tmp_path):
    add_pending_relationships(engine, 5)
    with make_engine(database_url).connect() as holder:
        holder.execute(text("LOCK TABLE public.user_referral_relationships IN EXCLUSIVE MODE"))
        process, log = cli_process(["run", "expire-pending", "--as-of", "2026-06-01"], proxy.url, tmp_path)
        wait_until(lambda: waiting_on_a_lock(engine), what="the run blocked on the lock", timeout=30)
        proxy.freeze()  # from now on no answer reaches the run, and its cancel request is never heard
        holder.rollback()
        took = seconds_to_exit_after_sigterm(process)

    assert took < STOP_BOUND_SECONDS, log.read_text()
    assert process.returncode == 1
    assert "stop_deadline" in actions_in(log)


# ── the daemon ───────────────────────────────────────────────────────────────

def test_sigterm_ends_a_daemon_whose_run_waits_for_a_lock_within_5_s_with_exit_0(daemons, database_url, engine):
    with make_engine(database_url).connect() as blocker:
        pending_expiry_run_blocked_in_fifth_batch(engine, blocker)
        daemon = daemons(database_url, REWARDS_BATCH_SIZE="10", REWARDS_DB_LOCK_TIMEOUT_SECONDS="600",
                         **quiet_schedules(**{"expire-pending": "5 0 * * *"}))
        wait_until(lambda: blocked_in_fifth_batch(engine), what="the run blocked in its 5th batch")
        code, took = daemon.terminate()
        blocker.rollback()

    assert (code, took < STOP_BOUND_SECONDS) == (0, True), took
    [run] = runs_of(engine)
    assert run.status == "FAILED" and run.error.startswith("stopped on request after 4 batches"), run.error
    assert status_counts(engine) == {"EXPIRED": 40, "PENDING": 60}  # the 5th batch rolled back
    assert daemon.actions("retry_scheduled") == []
    assert [e["action"] for e in daemon.events()][-1] == "daemon_stopped"


def test_a_daemon_answers_healthz_503_within_2_s_once_its_database_hangs_and_stops_within_5_s(
        daemons, database_url, engine, proxy):
    with make_engine(database_url).connect() as blocker:
        pending_expiry_run_blocked_in_fifth_batch(engine, blocker)
        daemon = daemons(proxy.url, REWARDS_BATCH_SIZE="10", REWARDS_DB_LOCK_TIMEOUT_SECONDS="600",
                         **quiet_schedules(**{"expire-pending": "5 0 * * *"}))
        wait_until(lambda: blocked_in_fifth_batch(engine), what="the run blocked in its 5th batch")
        daemon.wait_for_http()
        wait_until(lambda: daemon.get("/healthz")[0] == 200, what="a healthy daemon")

        proxy.freeze()
        hung_at = time.monotonic()
        answers = []
        while time.monotonic() - hung_at < 6:
            answers.append(timed_get(daemon, "/healthz"))
        code, took = daemon.terminate()
        blocker.rollback()

    assert max(seconds for _, _, seconds in answers) < HEALTH_BOUND_SECONDS
    status, body, _ = answers[-1]
    assert status == 503 and body["database"].startswith("no answer for "), body
    assert (code, took < STOP_BOUND_SECONDS) == (0, True), took


def test_healthz_answers_503_within_2_s_while_the_database_hangs_and_no_thread_piles_up(daemons, hanging_server):
    daemon = daemons(hanging_server.url)
    daemon.wait_for_http()
    time.sleep(HEALTH_BOUND_SECONDS)  # the first probe of the database is overdue
    baseline = thread_count(daemon.process.pid)

    answers = [timed_get(daemon, "/healthz") for _ in range(20)]

    assert all(status == 503 for status, _, _ in answers)
    assert max(seconds for _, _, seconds in answers) < HEALTH_BOUND_SECONDS
    assert answers[-1][1]["database"].startswith("no answer for "), answers[-1][1]
    wait_until(lambda: thread_count(daemon.process.pid) <= baseline, timeout=3,
               what=f"the daemon back to {baseline} threads (it has {thread_count(daemon.process.pid)})")
    code, took = daemon.terminate()
    assert (code, took < STOP_BOUND_SECONDS) == (0, True), took


def test_metrics_scrapes_while_the_database_hangs_hold_one_thread_not_one_each(daemons, hanging_server):
    daemon = daemons(hanging_server.url)
    daemon.wait_for_http()
    baseline = thread_count(daemon.process.pid)

    scrapes = [scrape(daemon, "/metrics") for _ in range(10)]

    assert scrapes[0] is None  # the first scrape waits for the database (until its connect timeout)
    assert scrapes[1:] == [200] * 9  # the others answer, without what the database would have said
    wait_until(lambda: thread_count(daemon.process.pid) <= baseline + 1, timeout=3,
               what=f"the daemon back to {baseline} + 1 threads (it has {thread_count(daemon.process.pid)})")
    assert daemon.terminate()[0] == 0


def scrape(daemon: DaemonProcess, path: str) -> int | None:
    """The status of a GET that waits at most 1 s for its answer (None when none came)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}{path}", timeout=1) as response:
            return response.status
    except TimeoutError:
        return None


def every_second() -> dict[str, str]:
    """A daemon that logs all the time: expire-pending every second."""
    return quiet_schedules(**{"expire-pending": "* * * * * *"})


def test_a_daemon_whose_log_reader_is_gone_runs_on_and_stops_within_5_s_with_exit_0(daemons, database_url, engine):
    read_end, write_end = os.pipe()
    daemon = daemons(database_url, output=write_end, **every_second())
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        wait_until(lambda: b'"action": "run_finished"' in reader.readline(), what="a first run")
    closed_at = len(runs_of(engine))

    wait_until(lambda: len([r for r in runs_of(engine)[closed_at:] if r.status == "SUCCEEDED"]) >= 2,
               what="runs succeeding with nobody reading the log", timeout=15)
    took = seconds_to_exit_after_sigterm(daemon.process)

    assert (daemon.process.returncode, took < STOP_BOUND_SECONDS) == (0, True), took
    assert [r.status for r in runs_of(engine)[closed_at:] if r.status not in ("SUCCEEDED", "RUNNING")] == []


def test_a_daemon_whose_log_pipe_is_full_stops_within_5_s_with_exit_0(daemons, database_url):
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: a few lines fill it
    daemon = daemons(database_url, output=write_end, **every_second())
    os.close(write_end)
    try:
        wait_until(lambda: writer_blocked(read_end), what="the log pipe full, its writer blocked")
        took = seconds_to_exit_after_sigterm(daemon.process)
    finally:
        os.close(read_end)

    assert (daemon.process.returncode, took < STOP_BOUND_SECONDS) == (0, True), took


def unread_bytes(read_end: int) -> int:
    return struct.unpack("i", fcntl.ioctl(read_end, termios.FIONREAD, b"\0\0\0\0"))[0]


def writer_blocked(read_end: int) -> bool:
    """The pipe is nearly full and takes nothing more for 1.5 s, though the daemon logs every second."""
    before = unread_bytes(read_end)
    time.sleep(1.5)
    return before >= 4096 - 1024 and unread_bytes(read_end) == before
