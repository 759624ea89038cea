"""The reward jobs follow the data as it is now: late relationships and parents, late payments,
FAILED → PAID, refunds (clawbacks, unrecovered points, re-earning), holds and unstorable rewards.
Each test is one scenario of the exact-history issue, run as an auditor would."""
from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from sqlalchemy import text

from core.runner import RunResult, run_job
from jobs import level2_rewards, recurring_rewards
from tests.builders import add_app_points, add_relationship, balance_of, ledger_rows, new_id, utc
from tests.integration.test_recurring_rewards import pay, rewarded


def run(engine, settings, as_of: datetime, job=recurring_rewards.JOB, **kwargs) -> RunResult:
    result = run_job(job, settings=settings, engine=engine, as_of=as_of, **kwargs)
    assert result.status == "SUCCEEDED", result.error
    return result


def set_payment(engine, payment: uuid.UUID, status: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_subscription_payments SET status = :status WHERE id = :id"),
                     {"status": status, "id": payment})


def rows_of(engine, relationship: uuid.UUID) -> list[tuple[str, str, int]]:
    """(type, key, delta) of the ledger rows of one relationship, by key."""
    with engine.connect() as conn:
        return [(row.type, row.idempotency_key, row.delta) for row in ledger_rows(conn, ref_id=relationship)]


def recorded(engine, relationship: uuid.UUID) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT idempotency_key, level, month, payment_id, points, clawback_key, clawed_back_points,"
            " unrecovered_points, clawed_back_at FROM public.referral_rewards WHERE relationship_id = :id"
            " ORDER BY idempotency_key"), {"id": relationship}))


# ── late relationships and parents ──────────────────────────────────────────

def test_level_2_parent_activated_late_pays_all_six_months_like_a_fresh_database(engine, settings):
    a, b, c = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        a_to_b = add_relationship(conn, referrer=a, referred=b, status="PENDING")
        b_to_c = add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2026, 1, 5))
    for month in range(1, 8):
        pay(engine, c, utc(2026, month, 5))
    run(engine, settings, utc(2026, 7, 10), job=level2_rewards.JOB)
    assert rows_of(engine, b_to_c) == []

    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_referral_relationships SET status = 'ACTIVE' WHERE id = :id"),
                     {"id": a_to_b})
    run(engine, settings, utc(2026, 7, 11), job=level2_rewards.JOB)

    assert [key for _, key, _ in rows_of(engine, b_to_c)] == [f"l2:{b_to_c}:{k}" for k in range(6)]
    with engine.connect() as conn:
        assert balance_of(conn, a).balance == 600


def test_relationship_turned_rewarded_late_earns_its_early_months(engine, settings):
    referrer, referred = new_id(), new_id()
    with engine.begin() as conn:
        relationship = add_relationship(conn, referrer=referrer, referred=referred, status="ACTIVE")
    for month in range(1, 6):
        pay(engine, referred, utc(2025, month, 3))
    run(engine, settings, utc(2026, 1, 1))

    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_referral_relationships SET status = 'REWARDED',"
                          " rewarded_at = :at WHERE id = :id"), {"at": utc(2025, 1, 3), "id": relationship})
    run(engine, settings, utc(2026, 1, 2))

    assert [key for _, key, _ in rows_of(engine, relationship)] == [f"recurring:{relationship}:{k}" for k in range(1, 5)]


# ── late payments and FAILED → PAID ─────────────────────────────────────────

def test_payment_recorded_months_after_its_month_ended_is_rewarded_by_the_next_run(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 1))
    run(engine, settings, utc(2025, 12, 1))
    pay(engine, referred, utc(2025, 3, 15))  # month 2, recorded eight months late

    late = run(engine, settings, utc(2025, 12, 2))

    assert rows_of(engine, relationship) == [("REFERRAL_RECURRING", f"recurring:{relationship}:2", 200)]
    assert late.stats["rows_written"] == {"REFERRAL_RECURRING": 1}


def test_failed_payment_turned_paid_long_after_is_rewarded(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 1))
    payment = pay(engine, referred, utc(2025, 2, 10), status="FAILED")
    run(engine, settings, utc(2025, 6, 1))
    assert rows_of(engine, relationship) == []

    set_payment(engine, payment, "PAID")
    run(engine, settings, utc(2025, 6, 2))

    assert rows_of(engine, relationship) == [("REFERRAL_RECURRING", f"recurring:{relationship}:1", 200)]


def test_rerunning_a_past_date_in_between_loses_nothing(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 1))
    run(engine, settings, utc(2025, 12, 1))
    run(engine, settings, utc(2025, 3, 1))  # ops re-run a past date
    pay(engine, referred, utc(2025, 10, 20))  # month 9, recorded late

    run(engine, settings, utc(2025, 12, 2))

    assert rows_of(engine, relationship) == [("REFERRAL_RECURRING", f"recurring:{relationship}:9", 200)]


# ── refunds: clawback, unrecovered, re-earning ──────────────────────────────

def test_refunded_basis_payment_is_clawed_back_once_for_the_same_beneficiary(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))

    set_payment(engine, payment, "REFUNDED")
    result = run(engine, settings, utc(2026, 3, 2))
    again = run(engine, settings, utc(2026, 3, 3))

    key = f"recurring:{relationship}:1"
    assert rows_of(engine, relationship) == [("REFERRAL_CLAWBACK", f"clawback:{key}", -200),
                                             ("REFERRAL_RECURRING", key, 200)]
    assert result.stats["clawed_back_points"] == 200 and result.stats["unrecovered_points"] == 0
    assert again.stats["clawbacks"] == 0 and "rows_written" not in again.stats
    with engine.connect() as conn:
        assert tuple(balance_of(conn, referrer)) == (0, 200, -200)  # a debit: total_spent moves
    [row] = recorded(engine, relationship)
    assert (row.payment_id, row.points, row.clawback_key, row.clawed_back_points, row.unrecovered_points,
            row.clawed_back_at) == (payment, 200, f"clawback:{key}", 200, 0, utc(2026, 3, 2))


@pytest.mark.parametrize("change", ["FAILED", "gone"])
def test_a_basis_that_failed_or_left_the_feed_is_clawed_back_too(engine, settings, change):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))

    if change == "gone":
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM public.user_subscription_payments WHERE id = :id"), {"id": payment})
    else:
        set_payment(engine, payment, change)
    run(engine, settings, utc(2026, 3, 2))

    assert [kind for kind, _, _ in rows_of(engine, relationship)] == ["REFERRAL_CLAWBACK", "REFERRAL_RECURRING"]


def test_clawback_never_takes_a_balance_below_zero_and_records_the_rest_as_unrecovered(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))
    with engine.begin() as conn:  # the referrer spends 150 of the 200 points
        add_app_points(conn, user=referrer, delta=-150, type="REDEMPTION_QUOTA", created_at=utc(2026, 3, 1, 12))

    set_payment(engine, payment, "REFUNDED")
    result = run(engine, settings, utc(2026, 3, 2))

    assert rows_of(engine, relationship)[0] == ("REFERRAL_CLAWBACK", f"clawback:recurring:{relationship}:1", -50)
    assert (result.stats["clawed_back_points"], result.stats["unrecovered_points"]) == (50, 150)
    with engine.connect() as conn:
        assert balance_of(conn, referrer).balance == 0
    [row] = recorded(engine, relationship)
    assert (row.points, row.clawed_back_points, row.unrecovered_points) == (200, 50, 150)


def test_clawback_of_an_empty_balance_writes_no_row_and_records_it_all_unrecovered(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))
    with engine.begin() as conn:
        add_app_points(conn, user=referrer, delta=-200, type="REDEMPTION_UNLOCK", created_at=utc(2026, 3, 1, 12))

    set_payment(engine, payment, "REFUNDED")
    result = run(engine, settings, utc(2026, 3, 2))
    run(engine, settings, utc(2026, 3, 3))

    assert [kind for kind, _, _ in rows_of(engine, relationship)] == ["REFERRAL_RECURRING"]
    assert (result.stats["clawbacks"], result.stats["unrecovered_points"]) == (1, 200)
    [row] = recorded(engine, relationship)
    assert (row.clawback_key, row.clawed_back_points, row.unrecovered_points) == (
        f"clawback:recurring:{relationship}:1", 0, 200)


def test_a_refunded_month_earns_again_from_its_next_paid_payment_and_again_after_a_second_refund(
        engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    first = pay(engine, referred, utc(2026, 2, 3))
    second = pay(engine, referred, utc(2026, 2, 20), cents=3000)
    run(engine, settings, utc(2026, 3, 1))
    set_payment(engine, first, "REFUNDED")
    run(engine, settings, utc(2026, 3, 2))
    set_payment(engine, second, "REFUNDED")
    set_payment(engine, first, "PAID")  # billing reverses its refund

    run(engine, settings, utc(2026, 3, 3))

    key = f"recurring:{relationship}:1"
    assert sorted(rows_of(engine, relationship)) == sorted([
        ("REFERRAL_CLAWBACK", f"clawback:{key}", -200),
        ("REFERRAL_CLAWBACK", f"clawback:{key}:{second}", -300),
        ("REFERRAL_RECURRING", key, 200),
        ("REFERRAL_RECURRING", f"{key}:{first}", 200),
        ("REFERRAL_RECURRING", f"{key}:{second}", 300),
    ])
    with engine.connect() as conn:
        assert balance_of(conn, referrer).balance == 200
    standing = [row for row in recorded(engine, relationship) if row.clawback_key is None]
    assert [(row.idempotency_key, row.payment_id) for row in standing] == [(f"{key}:{first}", first)]


def test_a_payment_recorded_later_with_an_earlier_paid_at_does_not_reprice_a_standing_reward(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    basis = pay(engine, referred, utc(2026, 2, 20), cents=3000)
    run(engine, settings, utc(2026, 3, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=9000)  # earlier in the month, recorded later

    run(engine, settings, utc(2026, 3, 2))

    assert rows_of(engine, relationship) == [("REFERRAL_RECURRING", f"recurring:{relationship}:1", 300)]
    assert recorded(engine, relationship)[0].payment_id == basis


def test_a_later_status_change_never_takes_back_a_reward(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_referral_relationships SET status = 'EXPIRED' WHERE id = :id"),
                     {"id": relationship})

    run(engine, settings, utc(2026, 3, 2))

    assert [kind for kind, _, _ in rows_of(engine, relationship)] == ["REFERRAL_RECURRING"]


def test_level_2_reward_of_a_refunded_month_is_clawed_back_by_level2_rewards(engine, settings):
    a, b, c = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, referrer=a, referred=b, status="ACTIVE")
        b_to_c = add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, c, utc(2026, 2, 3))
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        run(engine, settings, utc(2026, 3, 1), job=job)

    set_payment(engine, payment, "REFUNDED")
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        run(engine, settings, utc(2026, 3, 2), job=job)

    assert sorted((kind, delta) for kind, _, delta in rows_of(engine, b_to_c)) == [
        ("REFERRAL_CLAWBACK", -200), ("REFERRAL_CLAWBACK", -100), ("REFERRAL_L2", 100), ("REFERRAL_RECURRING", 200)]
    with engine.connect() as conn:
        assert (balance_of(conn, a).balance, balance_of(conn, b).balance) == (0, 0)


def test_a_dry_run_reports_the_clawback_exactly_and_changes_nothing(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 3, 1))
    set_payment(engine, payment, "REFUNDED")

    dry = run(engine, settings, utc(2026, 3, 2), dry_run=True)
    assert [kind for kind, _, _ in rows_of(engine, relationship)] == ["REFERRAL_RECURRING"]
    assert recorded(engine, relationship)[0].clawback_key is None
    real = run(engine, settings, utc(2026, 3, 2))

    for key in ("rows_written", "points_written", "clawbacks", "clawed_back_points", "unrecovered_points"):
        assert dry.stats[key] == real.stats[key]


# ── holds ───────────────────────────────────────────────────────────────────

def test_a_payment_counts_only_once_the_hold_has_passed(engine, make_settings):
    settings = make_settings(reward_hold_days=14)
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 3))

    on_hold = run(engine, settings, utc(2026, 2, 16, 23, 59, 59))
    assert rows_of(engine, relationship) == []
    run(engine, settings, utc(2026, 2, 17))  # exactly 14 days after paid_at

    assert [key for _, key, _ in rows_of(engine, relationship)] == [f"recurring:{relationship}:1"]
    assert "rows_written" not in on_hold.stats


def test_a_refund_within_the_hold_needs_no_clawback(engine, make_settings):
    settings = make_settings(reward_hold_days=30)
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    run(engine, settings, utc(2026, 2, 20))
    set_payment(engine, payment, "REFUNDED")

    result = run(engine, settings, utc(2026, 4, 1))

    assert rows_of(engine, relationship) == [] and result.stats["clawbacks"] == 0


# ── what cannot be stored never blocks anything ─────────────────────────────

def test_rewards_too_large_for_the_cache_are_counted_and_logged_and_the_rest_is_written(engine, make_settings,
                                                                                         capsys):
    settings = make_settings(recurring_reward="2000000000")
    referrer = new_id()
    big_one, _, big_referred = rewarded(engine, rewarded_at=utc(2026, 1, 1), referrer=referrer)
    big_two, _, other_referred = rewarded(engine, rewarded_at=utc(2026, 1, 2), referrer=referrer)
    small, _, small_referred = rewarded(engine, rewarded_at=utc(2026, 1, 3))
    for user in (big_referred, other_referred, small_referred):
        pay(engine, user, utc(2026, 2, 10))

    result = run(engine, settings, utc(2026, 3, 1))

    assert result.stats["skipped_unstorable"] == 1  # the referrer's second 2e9 would pass INT
    with engine.connect() as conn:
        assert balance_of(conn, referrer).balance == 2_000_000_000
    assert len(rows_of(engine, big_one) + rows_of(engine, big_two)) == 1
    assert len(rows_of(engine, small)) == 1
    logged = capsys.readouterr().out
    assert "rewards_unstorable" in logged and "month" in logged
    assert run(engine, settings, utc(2026, 3, 2)).stats["skipped_unstorable"] == 1  # still counted, no failure


# ── the payments feed ───────────────────────────────────────────────────────

@pytest.mark.slow
def test_a_feed_view_without_a_column_the_jobs_read_is_refused_with_exit_2_naming_it(engine, cli):
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW public.thin_feed AS SELECT id, user_id, status, paid_at"
                          " FROM public.user_subscription_payments"))

    completed = cli("run", "recurring-rewards", "--as-of", "2026-06-01", env={"REWARDS_PAYMENTS_TABLE": "public.thin_feed"})
    missing = cli("run", "level2-rewards", "--as-of", "2026-06-01", env={"REWARDS_PAYMENTS_TABLE": "public.no_such_view"})

    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        "error: REWARDS_PAYMENTS_TABLE: public.thin_feed has no column amount_cents"]
    assert missing.returncode == 2 and "no table or view named public.no_such_view" in missing.stderr
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM public.job_runs")).scalar_one() == 0


@pytest.mark.slow
def test_the_cli_reports_clawback_stats_in_its_json_line(engine, cli):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, referred, utc(2026, 2, 3))
    assert cli("run", "recurring-rewards", "--as-of", "2026-03-01").returncode == 0
    set_payment(engine, payment, "REFUNDED")

    completed = cli("run", "recurring-rewards", "--as-of", "2026-03-02", "--json")

    stats = json.loads(completed.stdout.strip().splitlines()[-1])["stats"]
    assert (stats["clawbacks"], stats["clawed_back_points"], stats["unrecovered_points"]) == (1, 200, 0)
    assert stats["rows_written"] == {"REFERRAL_CLAWBACK": 1}
