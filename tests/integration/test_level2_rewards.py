"""level2-rewards: the referrer's referrer earns a share of each paid month 0..N-1."""
from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from sqlalchemy import text

from core.runner import RunResult, run_job
from jobs import level2_rewards, recurring_rewards
from tests.builders import add_relationship, balance_of, ledger_rows, new_id, utc
from tests.integration.test_recurring_rewards import add_ten_years_of_rewarded_chains, assert_one_pass_by_hash_joins, daily_plan

JOB = level2_rewards.JOB
REWARDED_AT = utc(2026, 1, 10, 9)
AS_OF = utc(2026, 12, 1)


def run(engine, settings, as_of: datetime = AS_OF, job=JOB) -> RunResult:
    result = run_job(job, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def relate(engine, referrer: uuid.UUID, referred: uuid.UUID, *, level: int = 1, status: str = "REWARDED",
           rewarded_at: datetime | None = REWARDED_AT) -> uuid.UUID:
    with engine.begin() as conn:
        return add_relationship(conn, referrer=referrer, referred=referred, level=level, status=status,
                                rewarded_at=rewarded_at if status == "REWARDED" else None)


def pay_monthly(engine, user: uuid.UUID, months: range, cents: int = 2000, start: datetime = REWARDED_AT) -> None:
    """One PAID payment a day into each month k of `months` (counted from `start`)."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
            " SELECT gen_random_uuid(), :user, :cents, 'PAID', CAST(:start AS timestamptz)"
            "        + make_interval(months => k, days => 1)"
            " FROM unnest(CAST(:months AS int[])) AS k"
        ), {"user": user, "cents": cents, "start": start, "months": list(months)})


def l2_months(engine, relationship: uuid.UUID) -> dict[int, tuple[uuid.UUID, int]]:
    """{month k: (beneficiary, points)} of the level-2 rows of one relationship."""
    with engine.connect() as conn:
        rows = ledger_rows(conn, ref_id=relationship, type="REFERRAL_L2")
    return {int(row.idempotency_key.rsplit(":", 1)[1]): (row.user_id, row.delta) for row in rows}


def l2_rows(engine) -> list:
    with engine.connect() as conn:
        return ledger_rows(conn, type="REFERRAL_L2")


@pytest.fixture
def abc():
    """A invited B, B invited C; C pays $20.00 in months 0..7 of B→C."""
    a, b, c = new_id(), new_id(), new_id()
    return a, b, c


# ── chains of level-1 rows ──────────────────────────────────────────────────

@pytest.mark.parametrize("parent_status", ["ACTIVE", "REWARDED"])
def test_referrer_of_the_referrer_earns_months_0_to_5(engine, settings, abc, parent_status):
    a, b, c = abc
    relate(engine, a, b, status=parent_status)
    b_to_c = relate(engine, b, c)
    pay_monthly(engine, c, range(0, 8))

    result = run(engine, settings)

    assert l2_months(engine, b_to_c) == {k: (a, 100) for k in range(6)}
    with engine.connect() as conn:
        assert tuple(balance_of(conn, a)) == (600, 600, 0)
        row = conn.execute(text(
            "SELECT created_at, note FROM public.user_point_transactions WHERE idempotency_key = :key"
        ), {"key": f"l2:{b_to_c}:0"}).one()
    assert row.created_at == AS_OF
    assert row.note.startswith("level-2 month 0, basis payment ")
    assert result.stats["rows_written"] == {"REFERRAL_L2": 6}


def test_twenty_dollars_gives_200_recurring_and_100_level_2_points(engine, settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    b_to_c = relate(engine, b, c)
    pay_monthly(engine, c, range(1, 2))

    run(engine, settings, job=recurring_rewards.JOB)
    run(engine, settings)

    with engine.connect() as conn:
        rows = ledger_rows(conn, ref_id=b_to_c)
    assert [(row.type, row.user_id, row.delta) for row in rows] == [
        ("REFERRAL_L2", a, 100), ("REFERRAL_RECURRING", b, 200)]


@pytest.mark.parametrize("parent_status", ["PENDING", "EXPIRED"])
def test_pending_or_expired_parent_gives_no_level_2_reward(engine, settings, abc, parent_status):
    a, b, c = abc
    relate(engine, a, b, status=parent_status)
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []


def test_level_1_row_whose_parent_row_is_level_2_gives_no_reward(engine, settings, abc):
    a, b, c = abc
    relate(engine, a, b, level=2, status="ACTIVE")
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 3))

    run(engine, settings)

    assert l2_rows(engine) == []


def test_referrer_who_was_never_referred_gives_no_reward(engine, settings, abc):
    _, b, c = abc
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []


@pytest.mark.parametrize("status", ["PENDING", "ACTIVE", "EXPIRED"])
def test_relationship_not_yet_rewarded_earns_nothing(engine, settings, abc, status):
    a, b, c = abc
    relate(engine, a, b)
    relate(engine, b, c, status=status)
    pay_monthly(engine, c, range(0, 3))

    run(engine, settings)

    assert l2_rows(engine) == []


# ── stored level-2 rows ─────────────────────────────────────────────────────

def test_stored_level_2_row_rewards_its_referrer(engine, settings, abc):
    a, _, c = abc
    a_to_c = relate(engine, a, c, level=2)
    pay_monthly(engine, c, range(0, 8), cents=3000)

    run(engine, settings)

    assert l2_months(engine, a_to_c) == {k: (a, 150) for k in range(6)}


def test_stored_level_2_row_is_not_a_recurring_reward(engine, settings, abc):
    a, _, c = abc
    relate(engine, a, c, level=2)
    pay_monthly(engine, c, range(0, 3))

    run(engine, settings, job=recurring_rewards.JOB)

    with engine.connect() as conn:
        assert ledger_rows(conn) == []


# ── cycles and self-referrals ───────────────────────────────────────────────

def test_cycle_a_to_b_to_a_gives_nothing(engine, settings, abc):
    a, b, _ = abc
    relate(engine, a, b)
    relate(engine, b, a)
    pay_monthly(engine, a, range(0, 3))
    pay_monthly(engine, b, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []


@pytest.mark.parametrize("level", [1, 2])
def test_self_referral_gives_nothing(engine, settings, level):
    user = new_id()
    relate(engine, user, user, level=level)
    pay_monthly(engine, user, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []


def test_referrer_who_referred_themself_is_not_their_own_level_2_beneficiary(engine, settings, abc):
    _, b, c = abc
    relate(engine, b, b)  # B's own relationship: B referred B
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []


def test_rewarded_relationship_without_rewarded_at_is_skipped_and_counted(engine, settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    with engine.begin() as conn:
        add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=None)
    pay_monthly(engine, c, range(0, 3))

    result = run(engine, settings)

    assert l2_rows(engine) == []
    assert result.stats["skipped_missing_rewarded_at"] == 1


# ── settings ────────────────────────────────────────────────────────────────

def test_l2_months_setting_caps_the_months(engine, make_settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    b_to_c = relate(engine, b, c)
    pay_monthly(engine, c, range(0, 5))

    run(engine, make_settings(l2_months=2))

    assert set(l2_months(engine, b_to_c)) == {0, 1}


def test_zero_l2_months_writes_nothing(engine, make_settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 5))

    run(engine, make_settings(l2_months=0))

    assert l2_rows(engine) == []


@pytest.mark.parametrize(("reward", "expected"), [("2.5%", 50), ("150", 150), ("0", None), ("0%", None)])
def test_l2_reward_amount(engine, make_settings, abc, reward, expected):
    a, b, c = abc
    relate(engine, a, b)
    b_to_c = relate(engine, b, c)
    pay_monthly(engine, c, range(0, 1))

    run(engine, make_settings(l2_reward=reward))

    assert l2_months(engine, b_to_c) == ({0: (a, expected)} if expected else {})


# ── reruns, the restricted scan, dry run ────────────────────────────────────

def test_rerun_changes_nothing(engine, settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    relate(engine, b, c)
    pay_monthly(engine, c, range(0, 8))
    run(engine, settings)
    before = l2_rows(engine)

    again = run(engine, settings)

    assert l2_rows(engine) == before
    assert "rows_written" not in again.stats
    with engine.connect() as conn:
        assert balance_of(conn, a).balance == 600


def test_runs_at_several_as_of_dates_in_any_order_equal_one_run_at_the_latest(engine, settings, abc):
    a, b, c = abc
    relate(engine, a, b)
    b_to_c = relate(engine, b, c)
    pay_monthly(engine, c, range(0, 8))

    for as_of in (utc(2026, 4, 1), utc(2026, 2, 1), utc(2026, 9, 1), utc(2026, 3, 15)):
        run(engine, settings, as_of)

    assert l2_months(engine, b_to_c) == {k: (a, 100) for k in range(6)}
    with engine.connect() as conn:
        assert balance_of(conn, a).balance == 600


def test_the_plan_reads_all_history_by_hash_joins_even_with_stale_statistics(engine, settings):
    add_ten_years_of_rewarded_chains(engine)

    assert_one_pass_by_hash_joins(daily_plan(engine, level2_rewards, settings))


@pytest.mark.slow
def test_dry_run_reports_exactly_what_the_real_run_then_writes(engine, cli, abc):
    a, b, c = abc
    relate(engine, a, b)
    relate(engine, b, c)
    relate(engine, a, new_id(), level=2)
    pay_monthly(engine, c, range(0, 8), cents=1999)

    dry = cli("run", "level2-rewards", "--as-of", "2026-12-01", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert l2_rows(engine) == []
    real = cli("run", "level2-rewards", "--as-of", "2026-12-01", "--json")
    assert real.returncode == 0, real.stderr

    dry_stats = json.loads(dry.stdout.strip().splitlines()[-1])["stats"]
    real_stats = json.loads(real.stdout.strip().splitlines()[-1])["stats"]
    assert dry_stats["rows_written"] == real_stats["rows_written"] == {"REFERRAL_L2": 6}
    assert dry_stats["points_written"] == real_stats["points_written"] == {"REFERRAL_L2": 6 * 99}
    assert sum(row.delta for row in l2_rows(engine)) == 6 * 99
