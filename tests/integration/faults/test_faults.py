"""Fault trials (issue 14): SIGKILL at random points of every writing job, a daemon killed mid-run and
restarted, a database restart mid-run, a full reports folder, two daemons on one schedule (one of them
killed, one with a clock 40 s fast), and app writers during expire-points and reconcile. Each ends
with the books checked: no point lost or duplicated, cache true to the ledger, and the runs' records
accounting for every row written."""
from __future__ import annotations

import random
import resource
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from core.db import make_engine
from core.runner import run_job
from jobs import JOBS, PipelineSettings
from tests.integration.faults.conftest import (AS_OF, WORLD_AS_OF, books, cache_disagreements, cli_env, fork_cli,
                                               running_row_of, runs_of)
from tests.integration.test_daemon import (DaemonProcess, add_pending_relationships,  # noqa: F401 (fixtures)
                                           add_rewarded_chain, blocked_in_fifth_batch, daemons, own_server,
                                           points_by_user, quiet_schedules, relationship_id, status_counts,
                                           wait_until)

pytestmark = pytest.mark.slow

WRITING_JOBS = ("expire-pending", "recurring-rewards", "level2-rewards", "expire-points")
KEY_NAMESPACES = {"recurring-rewards": "recurring", "level2-rewards": "l2", "expire-points": "expiry"}
KILLS = 10
BATCH_SIZE = "25"
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _reference_run(reference_url: str, job: str, tmp_path: Path) -> float:
    """Run `job` once without faults on the reference; return how long its work took."""
    engine = make_engine(reference_url)
    settings = PipelineSettings(_env_file=None, database_url=reference_url, reports_dir=tmp_path / "ref-reports",
                        batch_size=int(BATCH_SIZE))
    from core.clock import parse_as_of

    started = time.monotonic()
    result = run_job(JOBS[job], settings=settings, engine=engine, as_of=parse_as_of(AS_OF))
    took = time.monotonic() - started
    engine.dispose()
    assert result.status == "SUCCEEDED", result.error
    return took


def _counted_in_runs(engine: Any, job: str) -> int:
    """What the job's runs say they wrote: ledger rows, or relationships expired."""
    total = 0
    for run in runs_of(engine, job):
        if job == "expire-pending":
            total += run.stats.get("relationships_expired", 0)
        else:
            total += sum(run.stats.get("rows_written", {}).values())
    return total


def _written(engine: Any, job: str) -> int:
    with engine.connect() as conn:
        if job == "expire-pending":
            return conn.execute(text("SELECT count(*) FROM public.user_referral_relationships"
                                     " WHERE expired_at = CAST(:as_of AS timestamptz)"), {"as_of": AS_OF}).scalar()
        return conn.execute(text("SELECT count(*) FROM public.user_point_transactions"
                                 " WHERE created_at = CAST(:as_of AS timestamptz)"
                                 " AND (idempotency_key LIKE :own OR idempotency_key LIKE 'clawback:' || :own)"),
                            {"as_of": AS_OF, "own": KEY_NAMESPACES[job] + ":%"}).scalar()


def add_points_to_expire(engine: Any, count: int) -> None:
    """`count` users whose ids sort as 1..count, each with 10 points the app granted long ago (ledger
    row and cache row), all due to expire."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)"
            " SELECT CAST(lpad(to_hex(i), 32, '0') AS uuid), 10, 'REFERRAL_WELCOME', 'welcome:' || i,"
            "        timestamptz '2020-01-01'"
            " FROM generate_series(1, :count) AS i"), {"count": count})
        conn.execute(text(
            "INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent)"
            " SELECT CAST(lpad(to_hex(i), 32, '0') AS uuid), 10, 10, 0 FROM generate_series(1, :count) AS i"),
            {"count": count})


@pytest.mark.parametrize("job", WRITING_JOBS)
def test_sigkill_at_random_points_loses_and_duplicates_nothing(job, world, engine, tmp_path):
    reference_url = world
    reference = make_engine(reference_url)
    if job == "expire-pending":  # the sample has few old PENDING relationships: give the job many batches
        for database in (engine, reference):
            add_pending_relationships(database, 6000)
    if job == "expire-points":  # its plan leaves only the users with points due: give it many of them
        for database in (engine, reference):
            add_points_to_expire(database, 6000)
    seconds = _reference_run(reference_url, job, tmp_path)
    rng = random.Random(f"{job}-14")
    env = cli_env(str(engine.url.render_as_string(hide_password=False)), tmp_path, REWARDS_BATCH_SIZE=BATCH_SIZE)
    kills = []
    for attempt in range(KILLS):
        child = fork_cli(["run", job, "--as-of", AS_OF], env, tmp_path / f"kill-{attempt}.log")
        wait_until(lambda: running_row_of(engine, job, child.pid) or child.poll() is not None,
                   what="the run claimed", timeout=60)
        # Somewhere in the first 15 % of the work left, so every kill lands in a run that still writes.
        left = 1 - _written(engine, job) / max(1, _written(reference, job))
        delay = rng.uniform(0, 0.15 * left * seconds)
        time.sleep(delay)
        kills.append((round(delay, 3), child.poll()))
        child.kill()
    finisher = fork_cli(["run", job, "--as-of", AS_OF], env, tmp_path / "finish.log")
    assert finisher.wait() == 0, (tmp_path / "finish.log").read_text()

    assert sum(1 for _, code in kills if code is None) >= KILLS - 2, f"most kills land mid-run: {kills}"
    assert books(engine) == books(reference), f"kills at {kills}"
    assert cache_disagreements(engine) == cache_disagreements(reference)  # the sample's own drift, nothing new
    statuses = [run.status for run in runs_of(engine, job)]
    assert statuses[-1] == "SUCCEEDED" and set(statuses[:-1]) <= {"ABANDONED", "SUCCEEDED"}, statuses
    assert _counted_in_runs(engine, job) == _written(engine, job) == _written(reference, job)
    reference.dispose()


def test_a_daemon_killed_mid_run_is_caught_up_by_the_next_within_a_minute(daemons, database_url, engine):
    add_pending_relationships(engine, 100)
    schedule = quiet_schedules(**{"expire-pending": "5 0 * * *"})
    with make_engine(database_url).connect() as blocker:
        blocker.execute(text("SELECT 1 FROM public.user_referral_relationships WHERE id = :id FOR UPDATE"),
                        {"id": relationship_id(50)})
        first = daemons(database_url, "first", REWARDS_BATCH_SIZE="10", **schedule)
        wait_until(lambda: blocked_in_fifth_batch(engine), what="the catch-up run blocked in its 5th batch", timeout=60)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        blocker.rollback()
    restarted = time.monotonic()
    second = daemons(database_url, "second", REWARDS_BATCH_SIZE="10", **schedule)

    wait_until(lambda: [r.status for r in runs_of(engine)][-1:] == ["SUCCEEDED"],
               what="the restarted daemon's catch-up", timeout=60)
    assert status_counts(engine) == {"EXPIRED": 100}
    assert time.monotonic() - restarted < 60
    runs = runs_of(engine)
    assert [(r.trigger, r.status) for r in runs] == [("catch-up", "ABANDONED"), ("catch-up", "SUCCEEDED")]
    assert runs[0].error.startswith("process gone")
    assert runs[0].stats["relationships_expired"] + runs[1].stats["relationships_expired"] == 100
    assert runs[0].scheduled_for == runs[1].scheduled_for
    assert second.terminate()[0] == 0


def test_a_database_restart_mid_run_loses_and_duplicates_nothing(own_server, world, tmp_path):
    from cli import sample_data
    from core import migrations

    reference = make_engine(world)
    for job in WRITING_JOBS:
        _reference_run(world, job, tmp_path)
    url = own_server.get_uri()
    engine = make_engine(url)
    migrations.migrate(engine)
    sample_data.generate(engine, users=1500, as_of=WORLD_AS_OF)
    env = cli_env(url, tmp_path, REWARDS_BATCH_SIZE="10", REWARDS_DB_CONNECT_TIMEOUT_SECONDS="3")

    child = fork_cli(["run-all", "--as-of", AS_OF], env, tmp_path / "run-all-1.log")
    wait_until(lambda: any(r.job == "recurring-rewards" and (r.stats or {}).get("batches", 0) >= 3
                           for r in runs_of(engine)), what="recurring-rewards mid-run", timeout=60)
    engine.dispose()
    own_server.stop()  # the database goes away in the middle of the run
    assert child.wait(timeout=120) == 1  # the runs fail, the process ends
    own_server.start()
    again = fork_cli(["run-all", "--as-of", AS_OF], env, tmp_path / "run-all-2.log")
    assert again.wait(timeout=120) == 0, (tmp_path / "run-all-2.log").read_text()

    assert books(engine) == books(reference)
    assert cache_disagreements(engine) == cache_disagreements(reference)
    assert not [r for r in runs_of(engine) if r.status == "RUNNING"]
    for job in WRITING_JOBS:
        assert _counted_in_runs(engine, job) == _written(engine, job) == _written(reference, job), [
            (r.id, r.job, r.status, r.error, r.stats.get("rows_written")) for r in runs_of(engine)]
    engine.dispose()
    reference.dispose()


def _file_size_limit(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _reports(tmp_path: Path) -> list[str]:
    folder = tmp_path / "reports"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_a_full_reports_folder_fails_the_reconcile_cleanly_and_the_next_one_succeeds(world, engine, tmp_path):
    env = cli_env(engine.url.render_as_string(hide_password=False), tmp_path)
    before = books(engine)

    full = fork_cli(["run", "reconcile", "--as-of", AS_OF, "--repair"], env, tmp_path / "full.log",
                    before=_file_size_limit(0))

    assert full.wait() == 1
    log = (tmp_path / "full.log").read_text()
    assert "reconciliation-20260601T000000Z-1.csv" in log  # the message names the file
    assert _reports(tmp_path) == []  # nothing under a final name, no .part left
    assert books(engine) == before  # no repair
    [run] = runs_of(engine, "reconcile")
    assert run.status == "FAILED"

    healthy = fork_cli(["run", "reconcile", "--as-of", AS_OF, "--repair"], env, tmp_path / "ok.log")
    assert healthy.wait() == 0, (tmp_path / "ok.log").read_text()
    assert cache_disagreements(engine) == []


def test_a_reports_folder_that_fills_after_the_csv_leaves_no_file_and_no_repair(world, engine, tmp_path):
    env = cli_env(engine.url.render_as_string(hide_password=False), tmp_path)
    before = books(engine)

    full = fork_cli(["run", "reconcile", "--as-of", AS_OF, "--repair"], env, tmp_path / "full.log",
                    before=_file_size_limit(1500))  # the CSV of a few discrepancies fits, the JSON does not

    assert full.wait() == 1
    assert _reports(tmp_path) == []
    assert books(engine) == before


def test_two_daemons_on_one_schedule_one_killed_one_with_a_fast_clock(daemons, database_url, engine):
    chain = add_rewarded_chain(engine)
    every_two_seconds = quiet_schedules(**{name: "*/2 * * * * *" for name in JOBS})
    first = daemons(database_url, "first", REWARDS_RUN_LEASE_SECONDS="3", **every_two_seconds)
    second = daemons(database_url, "second", REWARDS_RUN_LEASE_SECONDS="3", **every_two_seconds)

    def reconciled_ticks() -> int:
        return len({r.scheduled_for for r in runs_of(engine, "reconcile") if r.status == "SUCCEEDED"})

    wait_until(lambda: reconciled_ticks() >= 2, what="two reconciled ticks", timeout=60)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    ticks = reconciled_ticks()
    wait_until(lambda: reconciled_ticks() >= ticks + 3, what="three more ticks from the survivor", timeout=60)
    if FAKETIME.exists():
        fast = daemons(database_url, "fast", LD_PRELOAD=str(FAKETIME), FAKETIME="+40s",
                       FAKETIME_DONT_FAKE_MONOTONIC="1", **every_two_seconds)
        assert fast.process.wait(timeout=60) == 2
        assert "REWARDS_MAX_CLOCK_SKEW_SECONDS" in fast.log_path.read_text()
    assert second.terminate()[0] == 0

    runs = runs_of(engine)
    assert not [r for r in runs if r.status == "RUNNING"]
    succeeded: dict[Any, int] = {}
    for run in runs:
        if run.status == "SUCCEEDED":
            succeeded[(run.job, run.scheduled_for)] = succeeded.get((run.job, run.scheduled_for), 0) + 1
    assert set(succeeded.values()) == {1}  # every tick ran once
    assert points_by_user(engine) == {chain.a: (400, 400, 2), chain.z: (300, 300, 3)}


def _app_writer(url: str, users: list[Any], stop: threading.Event, counts: dict[str, int], seed: int) -> None:
    """The app's side of the contract: lock the balance row, check, write ledger row and cache together."""
    rng = random.Random(seed)
    engine = make_engine(url, pool_size=1)
    while not stop.is_set():
        user, amount = rng.choice(users), rng.randint(1, 300)
        debit = rng.random() < 0.6
        with engine.begin() as conn:
            balance = conn.execute(text("SELECT balance FROM public.user_point_balances WHERE user_id = :u FOR UPDATE"),
                                   {"u": user}).scalar()
            if debit and (balance is None or balance < amount):
                continue
            delta = -amount if debit else amount
            conn.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
                              " VALUES (:u, :d, :t, :k)"),
                         {"u": user, "d": delta, "t": "REDEMPTION_QUOTA" if debit else "ADMIN_GRANT",
                          "k": f"app:{uuid.uuid4()}"})
            conn.execute(text("UPDATE public.user_point_balances SET balance = balance + :d,"
                              " total_earned = total_earned + greatest(:d, 0), total_spent = total_spent + least(:d, 0)"
                              " WHERE user_id = :u"), {"u": user, "d": delta})
        counts["writes"] = counts.get("writes", 0) + 1
    engine.dispose()


def test_app_writers_during_expire_points_and_reconcile(world, engine, tmp_path):
    url = engine.url.render_as_string(hide_password=False)
    env = cli_env(url, tmp_path, REWARDS_BATCH_SIZE=BATCH_SIZE)
    repaired = fork_cli(["run", "reconcile", "--as-of", "2026-05-01", "--repair"], env, tmp_path / "repair.log")
    assert repaired.wait() == 0  # the sample's own drift repaired: from here, every discrepancy is new
    with engine.connect() as conn:
        users = [row[0] for row in conn.execute(text("SELECT user_id FROM public.user_point_balances ORDER BY 1"))]
    stop, counts = threading.Event(), {}
    writers = [threading.Thread(target=_app_writer, args=(url, users, stop, counts, n)) for n in range(4)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(0.5)
        expire = fork_cli(["run", "expire-points", "--as-of", AS_OF], env, tmp_path / "expire.log")
        assert expire.wait() == 0, (tmp_path / "expire.log").read_text()
        reconcile = fork_cli(["run", "reconcile", "--as-of", AS_OF, "--json"], env, tmp_path / "reconcile.log")
        assert reconcile.wait() == 0
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    assert counts.get("writes", 0) > 20  # the app really wrote meanwhile
    [*_, last] = runs_of(engine, "reconcile")
    assert last.stats["discrepancies"] == 0, last.stats  # concurrent app writes are never discrepancies
    assert cache_disagreements(engine) == []
    with engine.connect() as conn:
        negative = conn.execute(text("SELECT count(*) FROM (SELECT user_id FROM public.user_point_transactions"
                                     " GROUP BY user_id HAVING sum(delta) < 0) n")).scalar()
    assert negative == 0
    again = fork_cli(["run", "expire-points", "--as-of", AS_OF, "--json"], env, tmp_path / "again.log")
    assert again.wait() == 0
    [*_, rerun] = runs_of(engine, "expire-points")
    assert rerun.stats.get("rows_written", {}).get("EXPIRY", 0) == 0  # nothing left due: none missed
