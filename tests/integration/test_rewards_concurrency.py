"""Reward jobs under concurrency and crashes: every reward is written once, the cache moves once."""
from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest
from sqlalchemy import text

from core.job import RunContext
from core.runner import run_job
from jobs import level2_rewards, recurring_rewards
from tests.builders import utc

AS_OF = utc(2026, 6, 1)
RELATIONSHIPS = 20
SMALL_BATCHES = {"REWARDS_BATCH_SIZE": "1"}


def add_paying_relationships(engine, *, level: int = 1) -> list[Any]:
    """RELATIONSHIPS rewarded relationships a minute apart, each referred user paying $20.00 on day
    2 of months 0..13; returned in the order batches take them (id)."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_referral_relationships"
            " (referrer_user_id, referred_user_id, referral_code, level, status, rewarded_at)"
            " SELECT gen_random_uuid(), gen_random_uuid(), 'C', :level, 'REWARDED',"
            "        timestamptz '2025-01-01' + make_interval(mins => n)"
            " FROM generate_series(1, :n) AS n"
        ), {"level": level, "n": RELATIONSHIPS})
        conn.execute(text(
            "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
            " SELECT gen_random_uuid(), r.referred_user_id, 2000, 'PAID',"
            "        r.rewarded_at + make_interval(months => m, days => 1)"
            " FROM public.user_referral_relationships AS r, generate_series(0, 13) AS m"
        ))
        return list(conn.execute(text(
            "SELECT id, referrer_user_id FROM public.user_referral_relationships ORDER BY referred_user_id")))


def ledger_summary(engine) -> tuple[int, int, int]:
    """(rows, distinct keys, points) of the ledger."""
    with engine.connect() as conn:
        return tuple(conn.execute(text(
            "SELECT count(*), count(DISTINCT idempotency_key), coalesce(sum(delta), 0)"
            " FROM public.user_point_transactions")).one())


def cache_matches_ledger(engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT count(*) = 0 FROM ("
            "  SELECT user_id, sum(delta) AS balance FROM public.user_point_transactions GROUP BY user_id) AS l"
            " FULL JOIN public.user_point_balances AS b USING (user_id)"
            " WHERE l.balance IS DISTINCT FROM b.balance OR b.balance IS DISTINCT FROM b.total_earned"
        )).scalar_one()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def committed_rows(engine) -> int:
    return ledger_summary(engine)[0]


def runs_by_status(engine, job: str) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT status, count(*) FROM public.job_runs WHERE job = :job GROUP BY status"), {"job": job}).all())


class KeyBlocker:
    """Holds an uncommitted ledger row with one reward's key: a run reaching that reward waits."""

    def __init__(self, engine, key: str) -> None:
        self._conn = engine.connect()
        self._transaction = self._conn.begin()
        self._conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
            " VALUES (gen_random_uuid(), 1, 'TEST_BLOCKER', :key)"), {"key": key})

    def release(self) -> None:
        self._transaction.rollback()
        self._conn.close()


@pytest.mark.slow
def test_runs_started_while_one_runs_exit_3_and_each_reward_is_written_once(engine, make_settings, cli):
    add_paying_relationships(engine)
    after_four_batches, go_on = threading.Event(), threading.Event()

    def pause_after_batch_four(*, batches: int, **_: Any) -> None:  # called between batches
        if batches == 4:
            after_four_batches.set()
            go_on.wait(timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        holder = pool.submit(run_job, recurring_rewards.JOB, settings=make_settings(batch_size=1), engine=engine,
                             as_of=AS_OF, progress=pause_after_batch_four)
        assert after_four_batches.wait(timeout=60)
        others = list(pool.map(lambda _: cli("run", "recurring-rewards", "--as-of", AS_OF.isoformat()), range(3)))
        go_on.set()
        held = holder.result()

    assert held.status == "SUCCEEDED"
    assert [other.returncode for other in others] == [3, 3, 3]
    assert all("already running elsewhere" in other.stderr for other in others)
    assert ledger_summary(engine) == (RELATIONSHIPS * 12, RELATIONSHIPS * 12, RELATIONSHIPS * 12 * 200)
    assert cache_matches_ledger(engine)
    assert runs_by_status(engine, "recurring-rewards") == {"SUCCEEDED": 1, "SKIPPED": 3}


@pytest.mark.slow
def test_processes_started_together_write_each_reward_once(engine, cli):
    add_paying_relationships(engine)
    args = ("run", "recurring-rewards", "--as-of", AS_OF.isoformat())

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: cli(*args, env=SMALL_BATCHES), range(4)))

    codes = sorted(result.returncode for result in results)
    assert set(codes) <= {0, 3} and codes[0] == 0, [result.stderr for result in results]
    assert ledger_summary(engine) == (RELATIONSHIPS * 12, RELATIONSHIPS * 12, RELATIONSHIPS * 12 * 200)
    assert cache_matches_ledger(engine)
    statuses = runs_by_status(engine, "recurring-rewards")
    assert statuses == {"SUCCEEDED": codes.count(0), **({"SKIPPED": codes.count(3)} if 3 in codes else {})}


@pytest.mark.slow
@pytest.mark.parametrize(("job", "level", "rows_each", "points_each"), [
    (recurring_rewards.JOB, 1, 12, 200), (level2_rewards.JOB, 2, 6, 100)])
def test_racing_writers_write_each_reward_once_and_move_the_cache_once(
        engine, make_settings, job, level, rows_each, points_each):
    """Even two runs that both hold a lease (a takeover racing the old holder) write each reward
    once: the idempotency key decides, and only rows really inserted move the cache."""
    add_paying_relationships(engine, level=level)
    settings = make_settings(batch_size=1)
    with engine.begin() as conn:
        run_ids = [conn.execute(text(
            "INSERT INTO public.job_runs (job, trigger, as_of, status, host, pid)"
            " VALUES (:job, 'manual', :as_of, 'RUNNING', 'test', 0) RETURNING id"
        ), {"job": f"{job.name}-racer-{n}", "as_of": AS_OF}).scalar_one() for n in range(3)]
    start = threading.Barrier(len(run_ids))

    def race(run_id: int) -> dict:
        ctx = RunContext(job=job.name, run_id=run_id, as_of=AS_OF, settings=settings, engine=engine)
        start.wait()
        job.run(ctx)
        return ctx.stats

    with ThreadPoolExecutor(max_workers=len(run_ids)) as pool:
        stats = list(pool.map(race, run_ids))

    assert ledger_summary(engine) == (RELATIONSHIPS * rows_each, RELATIONSHIPS * rows_each,
                                      RELATIONSHIPS * rows_each * points_each)
    assert sum(sum(s.get("rows_written", {}).values()) for s in stats) == RELATIONSHIPS * rows_each
    assert cache_matches_ledger(engine)


@pytest.mark.slow
def test_run_killed_mid_way_is_abandoned_and_a_rerun_gives_one_clean_runs_ledger(engine, cli):
    relationships = add_paying_relationships(engine)
    blocker = KeyBlocker(engine, f"recurring:{relationships[7].id}:1")  # holds the 8th batch
    args = ("run", "recurring-rewards", "--as-of", AS_OF.isoformat(), "--json")
    with ThreadPoolExecutor(max_workers=1) as pool:
        doomed = pool.submit(cli, *args, env={**SMALL_BATCHES, "REWARDS_RUN_LEASE_SECONDS": "1"})
        wait_for(lambda: committed_rows(engine) == 7 * 12, "the first seven batches")
        with engine.connect() as conn:
            doomed_run = conn.execute(text(
                "SELECT id, pid FROM public.job_runs WHERE status = 'RUNNING'")).one()
        os.kill(doomed_run.pid, signal.SIGKILL)  # the process this test started, by its id
        assert doomed.result().returncode == -signal.SIGKILL
    blocker.release()
    assert committed_rows(engine) == 7 * 12
    time.sleep(1.5)  # let the killed run's lease expire

    rerun = cli(*args, env={"REWARDS_RUN_LEASE_SECONDS": "1"})

    assert rerun.returncode == 0, rerun.stderr
    assert ledger_summary(engine) == (RELATIONSHIPS * 12, RELATIONSHIPS * 12, RELATIONSHIPS * 12 * 200)
    assert cache_matches_ledger(engine)
    with engine.connect() as conn:
        killed = conn.execute(text("SELECT status, error FROM public.job_runs WHERE id = :id"),
                              {"id": doomed_run.id}).one()
    assert killed.status == "ABANDONED"
    assert "process gone" in killed.error  # this host, its pid dead: taken over at once
    assert runs_by_status(engine, "recurring-rewards") == {"ABANDONED": 1, "SUCCEEDED": 1}
