"""No server, database, role or directory is left behind by a test run, even an interrupted one
(tests/conftest.py, tests/housekeeping.py): a tiny run whose two tests each hold a database is
stopped while they wait, the way `kill` (SIGTERM) or Ctrl-C (SIGINT to the whole process group) stop
it; and what a process that is gone left behind is swept."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests import housekeeping
from tests.conftest import REPO
from tests.integration.conftest import _admin

TWO_WAITING_TESTS = """
import os
import time
from pathlib import Path


def test_one_waits_holding_databases(database_url, empty_database_url):
    Path(os.environ["LEFTOVERS_READY"], str(os.getpid())).write_text(database_url)
    time.sleep(300)


test_another_waits_holding_databases = test_one_waits_holding_databases
"""


def interrupted_run(tmp_path: Path, stop: signal.Signals, workers: int, server_url: str | None) -> set[int]:
    """Run TWO_WAITING_TESTS with the suite's conftest files, stop it once both tests wait, and return
    the ids of its processes (pytest's, and its workers')."""
    (tmp_path / "test_waiting.py").write_text(TWO_WAITING_TESTS)
    ready = tmp_path / "ready"
    ready.mkdir()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("PYTEST_", "TEST_DATABASE_URL", "COLUMNS", "LINES"))}
    env.update({"LEFTOVERS_READY": str(ready), **({"TEST_DATABASE_URL": server_url} if server_url else {})})
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull,
               "--rootdir", str(tmp_path), "-p", "tests.conftest", "-p", "tests.integration.conftest",
               "-n", str(workers), str(tmp_path / "test_waiting.py")]
    with open(tmp_path / "pytest.log", "w") as log:
        run = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # its own process group, as a terminal's job is
        try:
            deadline = time.monotonic() + 120
            while len(list(ready.iterdir())) < (2 if workers else 1):
                assert run.poll() is None and time.monotonic() < deadline, (tmp_path / "pytest.log").read_text()
                time.sleep(0.1)
            if stop == signal.SIGINT:
                os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
            else:
                run.send_signal(stop)  # `kill`: pytest alone
            assert run.wait(timeout=90) != 0, (tmp_path / "pytest.log").read_text()
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
    return {run.pid, *(int(path.name) for path in ready.iterdir())}


def wait_until_gone(pids: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while (alive := {pid for pid in pids if housekeeping.process_alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def databases_named_for_tests(server_url: str) -> list[str]:
    admin = _admin(server_url)
    with admin.connect() as conn:
        names = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
    admin.dispose()
    return [name for name in names if housekeeping.TEST_DATABASE.match(name)]


def processes_using(directory: Path) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(directory).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_sigterm_to_a_run_on_two_workers_stops_its_embedded_server_and_removes_its_directory(tmp_path):
    pids = interrupted_run(tmp_path, signal.SIGTERM, workers=2, server_url=None)

    assert wait_until_gone(pids) == set(), (tmp_path / "pytest.log").read_text()
    [controller] = [pid for pid in pids if pid not in {int(p.name) for p in (tmp_path / "ready").iterdir()}]
    left = list(Path(tempfile.gettempdir()).glob(f"rewards-test-pg-{controller}-*"))
    assert left == []
    assert processes_using(Path(f"rewards-test-pg-{controller}-")) == []  # no postgres of that directory


@pytest.mark.slow
def test_ctrl_c_of_a_run_drops_its_databases(tmp_path, server_url):
    pids = interrupted_run(tmp_path, signal.SIGINT, workers=0, server_url=server_url)

    assert wait_until_gone(pids) == set(), (tmp_path / "pytest.log").read_text()
    left = [name for name in databases_named_for_tests(server_url)
            if int(housekeeping.TEST_DATABASE.match(name)[1]) in pids]  # type: ignore[index]
    assert left == [], (tmp_path / "pytest.log").read_text()


def test_the_databases_and_roles_of_a_process_that_is_gone_are_swept(server_url):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)
    assert not housekeeping.process_alive(dead_pid)
    stale, live = f"rewards_t{dead_pid}_1", f"rewards_t{os.getpid()}_999999"
    role = f"rewards_jobs_t{dead_pid}_0123abcd"
    admin = _admin(server_url)
    with admin.connect() as conn:
        for name in (stale, live):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        conn.execute(text(f'CREATE ROLE "{role}"'))
    try:
        housekeeping.sweep(server_url)

        with admin.connect() as conn:
            databases = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            roles = set(conn.execute(text("SELECT rolname FROM pg_roles")).scalars())
        assert stale not in databases and role not in roles
        assert live in databases  # this process is alive: its databases stay
    finally:
        with admin.connect() as conn:
            for name in (stale, live):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
