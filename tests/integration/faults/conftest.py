"""Helpers of the fault trials: a sample world, a reference database that ran without faults, the real
command line run in a forked process (no interpreter start-up per kill: the imports are done), and
the checks that compare the books after the faults with the reference."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import Engine, text

from cli import sample_data
from core.db import make_engine
from tests.integration.conftest import _admin, _scratch_database

WORLD_AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)
AS_OF = "2026-06-01"
USERS = 1500


@dataclass
class Forked:
    """The real CLI (`scheduler.main`) in a forked child; its output in a log file."""

    pid: int
    log: Path
    code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the command did not end in {timeout}s; log:\n{self.log.read_text()}")
            time.sleep(0.02)
        time.sleep(0.05)  # the last of its output reaches the log
        return self.code  # type: ignore[return-value]

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)  # reaped: its pid is gone for the takeover
            self.code = os.waitstatus_to_exitcode(status)


def fork_cli(args: list[str], env: dict[str, str], log: Path, *, before: Callable[[], None] | None = None) -> Forked:
    """Run `scheduler.py ARGS` in a child forked from this process (its environment replaced by `env`)."""
    def body() -> int:
        os.environ.clear()
        os.environ.update(env)
        if before:
            before()
        import scheduler

        return scheduler.main(args)

    return fork_child(body, log)


def fork_child(body: Callable[[], int], log: Path) -> Forked:
    """Run `body` in a child forked from this process, its output appended to `log`; its exit code is
    what `body` returns (70 when it raises, the traceback in the log)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()  # a pipe, not the file: a file-size limit of the child spares its output
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 70
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # not pytest's capture objects
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            code = body()
        except BaseException:  # noqa: BLE001 — report anything, then leave without running pytest's cleanups
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    threading.Thread(target=_copy_to_file, args=(read_end, log), daemon=True).start()
    return Forked(pid, log)


def _copy_to_file(read_end: int, log: Path) -> None:
    with open(log, "ab", buffering=0) as out:
        while chunk := os.read(read_end, 65536):
            out.write(chunk)
    os.close(read_end)


def cli_env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_") and k != "PGOPTIONS"}
    env.update({"DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports"),
                "REWARDS_DATA_DIR": str(tmp_path / "data"), "REWARDS_LOG_FORMAT": "json", "REWARDS_HTTP_PORT": "0"})
    env.update(extra)
    return env


@pytest.fixture
def world(database_url: str, server_url: str) -> Iterator[tuple[str, str]]:
    """A sample world in this test's database and, cloned from it before anything ran, a reference
    database: (url, reference url)."""
    engine = make_engine(database_url, pool_size=1)
    sample_data.generate(engine, users=USERS, as_of=WORLD_AS_OF)
    engine.dispose()
    yield from _scratch_database(server_url, "rewards_ref", make_url_database(database_url))


def make_url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database


def books(engine: Engine) -> dict[str, Any]:
    """Everything the jobs change, comparable between two databases."""
    with engine.connect() as conn:
        return {
            "ledger": Counter(tuple(row) for row in conn.execute(text(
                "SELECT user_id, type, delta, idempotency_key, created_at FROM public.user_point_transactions"))),
            "cache": dict(conn.execute(text(
                "SELECT user_id, (balance, total_earned, total_spent) FROM public.user_point_balances")).all()),
            "relationships": dict(conn.execute(text(
                "SELECT id, (status, expired_at) FROM public.user_referral_relationships")).all()),
        }


def cache_disagreements(engine: Engine) -> list[Any]:
    """Users whose cache row differs from their ledger sums (the ledger writer keeps them together)."""
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT user_id, l.balance, b.balance FROM ("
            "  SELECT user_id, sum(delta) AS balance, sum(greatest(delta, 0)) AS earned,"
            "         sum(least(delta, 0)) AS spent FROM public.user_point_transactions GROUP BY user_id) l"
            " FULL JOIN public.user_point_balances b USING (user_id)"
            " WHERE (coalesce(l.balance, 0), coalesce(l.earned, 0), coalesce(l.spent, 0))"
            "       IS DISTINCT FROM (b.balance, b.total_earned, b.total_spent)"
            " ORDER BY user_id")))


def runs_of(engine: Engine, job: str | None = None) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT id, job, trigger, status, stats, error, pid, scheduled_for FROM public.job_runs"
            " WHERE CAST(:job AS text) IS NULL OR job = :job ORDER BY id"), {"job": job}))


def running_row_of(engine: Engine, job: str, pid: int) -> bool:
    """Whether process `pid` has claimed a run of `job` (and it is RUNNING)."""
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM public.job_runs WHERE job = :job AND status = 'RUNNING'"
                                      " AND pid = :pid"), {"job": job, "pid": pid}).scalar())


def admin_engine(server_url: str) -> Engine:
    return _admin(server_url)
