"""Issue 23, one scenario per numbered failure, with the ledger SPEC v3 and docs/rules.md require.

1. One payment paid two months (its `paid_at` or the relationship's `rewarded_at` corrected).
2. Unrecovered points that were recoverable (a clawback priced before a credit of the same run; a
   refund reversed after an unrecovered clawback), and REWARDS_RECOVERY=off.
3. One bad row of a payments view failed every reward run.
4. expire-points dropped an expiry it could not store, with no count and no warning.
5. Clawbacks moved expiry (an older lot survived; an expired reward was clawed back again from other
   points; a past as-of clawed back a later reward; an expire-points run for an earlier date), and
   expiring-soon counts lots the same way.
6. A relationship deleted and re-inserted for the same referred user paid every month again.

Defaults throughout: 10% recurring, 5% level 2, 100 points per USD, so a $20.00 payment (2000 cents)
gives 200 recurring and 100 level-2 points; points expire 12 months after they were earned.
"""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text

from core.runner import RunResult, run_job
from jobs import expire_points, expiring_soon, level2_rewards, recurring_rewards
from tests.builders import add_app_points, add_relationship, balance_of, new_id, utc

INT_MAX = 2**31 - 1


# ── helpers ─────────────────────────────────────────────────────────────────

def run_rewards(engine, settings, as_of: datetime) -> tuple[RunResult, RunResult]:
    """Both reward jobs at one as-of, in pipeline order: (recurring-rewards, level2-rewards)."""
    results = []
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        result = run_job(job, settings=settings, engine=engine, as_of=as_of)
        assert result.status == "SUCCEEDED", result.error
        results.append(result)
    return results[0], results[1]


def expire(engine, settings, as_of: datetime) -> RunResult:
    result = run_job(expire_points.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def relate(engine, referrer: uuid.UUID, referred: uuid.UUID, *, status: str = "REWARDED",
           rewarded_at: datetime | None = None, relationship_id: uuid.UUID | None = None) -> uuid.UUID:
    with engine.begin() as conn:
        new = add_relationship(conn, referrer=referrer, referred=referred, status=status, rewarded_at=rewarded_at)
        if relationship_id is not None:
            conn.execute(text("UPDATE public.user_referral_relationships SET id = :given WHERE id = :id"),
                         {"given": relationship_id, "id": new})
            return relationship_id
    return new


def pay(engine, user: uuid.UUID, paid_at: datetime, cents: int = 2000, status: str = "PAID") -> uuid.UUID:
    payment = new_id()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
            " VALUES (:id, :user, :cents, :status, :paid_at)"
        ), {"id": payment, "user": user, "cents": cents, "status": status, "paid_at": paid_at})
    return payment


def update(engine, table: str, row_id: uuid.UUID, **columns: Any) -> None:
    assignments = ", ".join(f"{column} = :{column}" for column in columns)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE public.{table} SET {assignments} WHERE id = :row_id"),
                     {**columns, "row_id": row_id})


def refund(engine, payment: uuid.UUID) -> None:
    update(engine, "user_subscription_payments", payment, status="REFUNDED")


def app_points(engine, user: uuid.UUID, delta: int, type: str, created_at: datetime, **kwargs: Any) -> None:
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=delta, type=type, created_at=created_at, **kwargs)


def job_rows(engine, user: uuid.UUID) -> dict[str, int]:
    """{key: delta} of the user's ledger rows that jobs wrote (the app's rows carry no key)."""
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT idempotency_key, delta FROM public.user_point_transactions"
            " WHERE user_id = :user AND idempotency_key IS NOT NULL"
        ), {"user": user}).all())


def row_by_key(engine, key: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT user_id, delta, type, ref_id, created_at FROM public.user_point_transactions"
            " WHERE idempotency_key = :key"), {"key": key}).one_or_none()


def ledger_balance(engine, user: uuid.UUID) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                 " WHERE user_id = :user"), {"user": user}).scalar_one()


def assert_cache_is_the_ledger(engine, *users: uuid.UUID) -> None:
    with engine.connect() as conn:
        for user in users:
            ledger = conn.execute(text(
                "SELECT coalesce(sum(delta), 0), coalesce(sum(delta) FILTER (WHERE delta > 0), 0),"
                " coalesce(sum(delta) FILTER (WHERE delta < 0), 0)"
                " FROM public.user_point_transactions WHERE user_id = :user"), {"user": user}).one()
            cache = balance_of(conn, user)
            assert tuple(cache or (0, 0, 0)) == tuple(ledger), user
            assert ledger[0] >= 0, user


def rewards_of(engine, referred: uuid.UUID) -> dict[str, Any]:
    """{key: basis record} of every reward of the referred user's months."""
    with engine.connect() as conn:
        return {row.idempotency_key: row for row in conn.execute(text(
            "SELECT * FROM public.referral_rewards WHERE referred_user_id = :referred"), {"referred": referred})}


def standing(engine, referred: uuid.UUID) -> dict[tuple[int, int], str]:
    """{(level, month): key} of the referred user's standing rewards; fails if a month has two."""
    months: dict[tuple[int, int], str] = {}
    for key, row in rewards_of(engine, referred).items():
        if row.clawback_key is None:
            assert (row.level, row.month) not in months, f"two rewards stand for {row.level, row.month}"
            months[(row.level, row.month)] = key
    return months


def sql_literal(value: uuid.UUID | None) -> str:
    return "NULL" if value is None else f"'{value}'"


def iso(as_of: datetime) -> str:
    """The as-of part of an expiry or recovery key."""
    return as_of.isoformat()


# ── 1. one payment pays two months ──────────────────────────────────────────

def test_a_payment_whose_paid_at_moves_into_the_next_month_is_clawed_back_there_and_paid_once(engine, settings):
    """B→C rewarded 2026-01-10 09:00: month 1 is [Feb 10 09:00, Mar 10 09:00). Billing first records
    the payment in month 1's last second, then corrects it to month 2's first instant."""
    a, b, c = new_id(), new_id(), new_id()
    relate(engine, a, b, status="ACTIVE")
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 10, 9))
    first = pay(engine, c, utc(2026, 1, 10, 9))                   # month 0: level 2 only
    moved = pay(engine, c, utc(2026, 3, 10, 8, 59, 59))          # month 1, its last second
    run_rewards(engine, settings, utc(2026, 3, 15))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}

    update(engine, "user_subscription_payments", moved, paid_at=utc(2026, 3, 10, 9))  # month 2's first instant
    recurring, level2 = run_rewards(engine, settings, utc(2026, 3, 16))

    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:2": 200}
    assert job_rows(engine, a) == {f"clawback:l2:{r}:1": -100, f"l2:{r}:0": 100, f"l2:{r}:1": 100,
                                   f"l2:{r}:2": 100}
    assert (ledger_balance(engine, b), ledger_balance(engine, a)) == (200, 200)  # one $20 each month it paid
    assert standing(engine, c) == {(1, 2): f"recurring:{r}:2", (2, 0): f"l2:{r}:0", (2, 2): f"l2:{r}:2"}
    month_2 = rewards_of(engine, c)[f"recurring:{r}:2"]
    assert (month_2.payment_id, month_2.basis_paid_at, month_2.basis_amount_cents) == (moved, utc(2026, 3, 10, 9), 2000)
    assert rewards_of(engine, c)[f"l2:{r}:0"].payment_id == first
    clawback = row_by_key(engine, f"clawback:recurring:{r}:1")
    assert (clawback.user_id, clawback.type, clawback.ref_id, clawback.created_at) == (
        b, "REFERRAL_CLAWBACK", r, utc(2026, 3, 16))
    assert (recurring.stats["clawed_back_points"], level2.stats["clawed_back_points"]) == (200, 100)

    again = run_rewards(engine, settings, utc(2026, 3, 17))
    assert all("rows_written" not in result.stats for result in again)
    assert_cache_is_the_ledger(engine, a, b)


def test_a_payment_moved_into_a_month_already_paid_pays_nothing_more(engine, settings):
    """Month 2 already stands on its own payment; the month-1 payment moved into month 2 leaves month 1
    unpaid and does not reprice month 2."""
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 10, 9))
    moved = pay(engine, c, utc(2026, 2, 20), cents=5000)
    own = pay(engine, c, utc(2026, 3, 20))
    run_rewards(engine, settings, utc(2026, 4, 1))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 500, f"recurring:{r}:2": 200}

    update(engine, "user_subscription_payments", moved, paid_at=utc(2026, 3, 10, 9))  # month 2's first instant
    run_rewards(engine, settings, utc(2026, 4, 2))

    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -500, f"recurring:{r}:1": 500,
                                   f"recurring:{r}:2": 200}
    assert standing(engine, c) == {(1, 2): f"recurring:{r}:2"}
    assert rewards_of(engine, c)[f"recurring:{r}:2"].payment_id == own
    assert ledger_balance(engine, b) == 200
    assert_cache_is_the_ledger(engine, b)


@pytest.mark.parametrize("correction", ["paid_at", "rewarded_at"])
def test_at_a_month_end_a_payment_pushed_into_the_next_month_pays_that_month_only(engine, settings, correction):
    """rewarded_at 2024-01-31 12:00 (a leap year): month 1 is [Feb 29 12:00, Mar 31 12:00). The payment
    of Mar 30 12:00 lies in month 1. Either billing moves it to Mar 31 12:00 (month 2's first instant),
    or rewarded_at is corrected to Jan 30 12:00, whose month 2 starts Mar 30 12:00, on the payment."""
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2024, 1, 31, 12))
    payment = pay(engine, c, utc(2024, 3, 30, 12))
    run_rewards(engine, settings, utc(2024, 4, 1))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}

    if correction == "paid_at":
        update(engine, "user_subscription_payments", payment, paid_at=utc(2024, 3, 31, 12))
    else:
        update(engine, "user_referral_relationships", r, rewarded_at=utc(2024, 1, 30, 12))
    run_rewards(engine, settings, utc(2024, 4, 2))

    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:2": 200}
    assert standing(engine, c) == {(1, 2): f"recurring:{r}:2"}
    assert ledger_balance(engine, b) == 200
    assert_cache_is_the_ledger(engine, b)


def test_with_a_hold_a_moved_payment_is_clawed_back_at_once_and_pays_its_new_month_once_the_hold_passed(
        engine, make_settings):
    """A 30-day hold: the hold delays the new month's reward, never the clawback of the old one."""
    settings = make_settings(reward_hold_days=30)
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    payment = pay(engine, c, utc(2026, 2, 20))  # month 1 = [Feb 10, Mar 10)
    run_rewards(engine, settings, utc(2026, 3, 22))  # Feb 20 + 30 days
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}

    update(engine, "user_subscription_payments", payment, paid_at=utc(2026, 3, 12))  # month 2
    run_rewards(engine, settings, utc(2026, 3, 25))
    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200}
    run_rewards(engine, settings, utc(2026, 4, 10, 23, 59, 59))
    assert f"recurring:{r}:2" not in job_rows(engine, b)

    run_rewards(engine, settings, utc(2026, 4, 11))  # Mar 12 + 30 days

    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:2": 200}
    assert_cache_is_the_ledger(engine, b)


def test_a_basis_amount_corrected_and_corrected_back_re_earns_under_payment_keys_numbered_from_2(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    payment = pay(engine, c, utc(2026, 2, 12))
    run_rewards(engine, settings, utc(2026, 2, 20))

    update(engine, "user_subscription_payments", payment, amount_cents=2500)
    run_rewards(engine, settings, utc(2026, 2, 21))
    update(engine, "user_subscription_payments", payment, amount_cents=2000)
    run_rewards(engine, settings, utc(2026, 2, 22))

    key = f"recurring:{r}:1"
    assert job_rows(engine, b) == {key: 200, f"clawback:{key}": -200, f"{key}:{payment}": 250,
                                   f"clawback:{key}:{payment}": -250, f"{key}:{payment}:2": 200}
    assert standing(engine, c) == {(1, 1): f"{key}:{payment}:2"}
    assert rewards_of(engine, c)[f"{key}:{payment}:2"].basis_amount_cents == 2000
    assert ledger_balance(engine, b) == 200
    assert_cache_is_the_ledger(engine, b)


def test_a_reward_whose_referrer_changed_is_clawed_back_from_its_own_beneficiary_and_re_earned_by_the_new_one(
        engine, settings):
    b, new_referrer, c = new_id(), new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    basis = pay(engine, c, utc(2026, 2, 12))
    later = pay(engine, c, utc(2026, 2, 25), cents=3000)  # month 1 too
    run_rewards(engine, settings, utc(2026, 3, 1))
    update(engine, "user_referral_relationships", r, referrer_user_id=new_referrer)
    unchanged = run_rewards(engine, settings, utc(2026, 3, 2))
    assert all("rows_written" not in result.stats for result in unchanged)  # a referrer change takes nothing

    refund(engine, basis)
    run_rewards(engine, settings, utc(2026, 3, 3))

    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"clawback:recurring:{r}:1": -200}
    assert job_rows(engine, new_referrer) == {f"recurring:{r}:1:{later}": 300}
    assert_cache_is_the_ledger(engine, b, new_referrer)


def test_a_corrected_rewarded_at_claws_back_the_months_whose_payments_left_them_and_pays_the_50_dollar_month(
        engine, settings):
    """rewarded_at was recorded as Jan 1 00:00; the first payment was Jan 15 09:00.
    Old grid: month 1 [Feb 1, Mar 1) holds the $20 of Feb 10, month 2 [Mar 1, Apr 1) the $50 of Mar 5.
    Corrected: month 0 [Jan 15 09:00, Feb 15 09:00) holds both $20s, month 1 [Feb 15 09:00, Mar 15 09:00)
    the $50, month 2 nothing."""
    a, b, c = new_id(), new_id(), new_id()
    relate(engine, a, b, status="ACTIVE")
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 1))
    first = pay(engine, c, utc(2026, 1, 15, 9))
    twenty = pay(engine, c, utc(2026, 2, 10))
    fifty = pay(engine, c, utc(2026, 3, 5), cents=5000)
    run_rewards(engine, settings, utc(2026, 3, 20))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recurring:{r}:2": 500}
    assert job_rows(engine, a) == {f"l2:{r}:0": 100, f"l2:{r}:1": 100, f"l2:{r}:2": 250}

    update(engine, "user_referral_relationships", r, rewarded_at=utc(2026, 1, 15, 9))
    run_rewards(engine, settings, utc(2026, 3, 21))

    assert job_rows(engine, b) == {
        f"clawback:recurring:{r}:1": -200, f"clawback:recurring:{r}:2": -500,
        f"recurring:{r}:1": 200, f"recurring:{r}:1:{fifty}": 500, f"recurring:{r}:2": 500}
    assert job_rows(engine, a) == {
        f"clawback:l2:{r}:1": -100, f"clawback:l2:{r}:2": -250,
        f"l2:{r}:0": 100, f"l2:{r}:1": 100, f"l2:{r}:1:{fifty}": 250, f"l2:{r}:2": 250}
    assert ledger_balance(engine, b) == 500  # the month whose own basis is the $50: 10%
    assert ledger_balance(engine, a) == 350  # 5% of the $20 of month 0 and of the $50 of month 1
    assert standing(engine, c) == {(1, 1): f"recurring:{r}:1:{fifty}", (2, 0): f"l2:{r}:0",
                                   (2, 1): f"l2:{r}:1:{fifty}"}
    records = rewards_of(engine, c)
    assert records[f"l2:{r}:0"].payment_id == first
    assert records[f"recurring:{r}:1"].payment_id == twenty
    assert records[f"recurring:{r}:1:{fifty}"].payment_id == fifty

    again = run_rewards(engine, settings, utc(2026, 3, 22))
    assert all("rows_written" not in result.stats for result in again)
    assert_cache_is_the_ledger(engine, a, b)


# ── 2. unrecovered points that were recoverable ─────────────────────────────

def test_a_clawback_priced_before_a_credit_of_the_same_run_is_recovered_from_that_credit(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    refunded = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))  # B spends it: balance 0

    refund(engine, refunded)
    pay(engine, c, utc(2026, 3, 5))  # month 2 = [Mar 5, Apr 5): paid, in the same run
    as_of = utc(2026, 3, 10)
    recurring, _ = run_rewards(engine, settings, as_of)

    recovery = f"recover:{b}:{iso(as_of)}:1"
    assert job_rows(engine, b) == {recovery: -200, f"recurring:{r}:1": 200, f"recurring:{r}:2": 200}
    recovered = row_by_key(engine, recovery)
    assert (recovered.type, recovered.ref_id, recovered.created_at) == ("REFERRAL_CLAWBACK", None, as_of)
    month_1 = rewards_of(engine, c)[f"recurring:{r}:1"]
    assert (month_1.clawback_key, month_1.clawed_back_points, month_1.expired_points, month_1.unrecovered_points,
            month_1.recovered_points) == (f"clawback:recurring:{r}:1", 0, 0, 200, 200)
    assert (recurring.stats["clawed_back_points"], recurring.stats["unrecovered_points"],
            recurring.stats["recovered_points"]) == (0, 200, 200)
    assert ledger_balance(engine, b) == 0  # outstanding 0: 200 earned once, spent once
    assert standing(engine, c) == {(1, 2): f"recurring:{r}:2"}

    again = run_rewards(engine, settings, as_of)
    assert all("rows_written" not in result.stats for result in again)
    assert again[0].stats["recovered_points"] == 0
    assert_cache_is_the_ledger(engine, b)


@pytest.mark.parametrize("refunded_first", [True, False], ids=["refunded user first", "credited user first"])
def test_a_clawback_and_a_credit_in_different_batches_of_one_run_lose_nothing(engine, make_settings, refunded_first):
    """One referred user a batch: C1's refund and C2's new month are written in different batches,
    in either order (the referred users' ids decide). Whichever comes first, B owes nothing after the
    run: the clawback takes the 200 outright, or leaves them unrecovered and the recovery takes them."""
    settings = make_settings(batch_size=1)
    b = new_id()
    c1, c2 = (uuid.UUID(int=1), uuid.UUID(int=2)) if refunded_first else (uuid.UUID(int=2), uuid.UUID(int=1))
    r1 = relate(engine, b, c1, rewarded_at=utc(2026, 1, 5))
    r2 = relate(engine, b, c2, rewarded_at=utc(2026, 1, 6))
    refunded = pay(engine, c1, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))

    refund(engine, refunded)
    pay(engine, c2, utc(2026, 2, 6))  # C2's month 1, recorded late
    as_of = utc(2026, 3, 1)
    recurring, _ = run_rewards(engine, settings, as_of)

    rows = job_rows(engine, b)
    assert {key: rows.pop(key) for key in (f"recurring:{r1}:1", f"recurring:{r2}:1")} == {
        f"recurring:{r1}:1": 200, f"recurring:{r2}:1": 200}
    assert rows in ({f"clawback:recurring:{r1}:1": -200}, {f"recover:{b}:{iso(as_of)}:1": -200})
    record = rewards_of(engine, c1)[f"recurring:{r1}:1"]
    assert record.clawed_back_points + record.recovered_points == 200
    assert record.unrecovered_points == record.recovered_points  # outstanding 0
    assert recurring.stats["unrecovered_points"] == recurring.stats["recovered_points"]
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_two_clawbacks_of_one_run_are_priced_in_key_order_against_one_balance(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    payments = [pay(engine, c, utc(2026, 2, 5)), pay(engine, c, utc(2026, 3, 5))]  # months 1 and 2
    run_rewards(engine, settings, utc(2026, 3, 10))
    app_points(engine, b, -100, "REDEMPTION_QUOTA", utc(2026, 3, 12))  # balance 300
    for payment in payments:
        refund(engine, payment)

    recurring, _ = run_rewards(engine, settings, utc(2026, 3, 15))

    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recurring:{r}:2": 200,
                                   f"clawback:recurring:{r}:1": -200, f"clawback:recurring:{r}:2": -100}
    records = rewards_of(engine, c)
    assert (records[f"recurring:{r}:1"].clawed_back_points,
            records[f"recurring:{r}:1"].unrecovered_points) == (200, 0)
    assert (records[f"recurring:{r}:2"].clawed_back_points,
            records[f"recurring:{r}:2"].unrecovered_points) == (100, 100)
    assert (recurring.stats["clawed_back_points"], recurring.stats["unrecovered_points"]) == (300, 100)
    assert recurring.stats["recovered_points"] == 0  # nothing left to recover from
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_a_recovery_is_attributed_to_the_oldest_outstanding_clawback_first(engine, settings):
    """r1's clawback (Mar 1) is older than r2's (Mar 3), though r2's key sorts first: a recovery of 300
    of the 400 outstanding settles r1's 200, then 100 of r2's."""
    b, c1, c2 = new_id(), new_id(), new_id()
    r1 = relate(engine, b, c1, rewarded_at=utc(2026, 1, 5), relationship_id=uuid.UUID(int=2))
    r2 = relate(engine, b, c2, rewarded_at=utc(2026, 1, 6), relationship_id=uuid.UUID(int=1))
    p1, p2 = pay(engine, c1, utc(2026, 2, 5)), pay(engine, c2, utc(2026, 2, 7))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -400, "REDEMPTION_QUOTA", utc(2026, 2, 12))
    refund(engine, p1)
    run_rewards(engine, settings, utc(2026, 3, 1))
    refund(engine, p2)
    run_rewards(engine, settings, utc(2026, 3, 3))
    pay(engine, c1, utc(2026, 3, 6), cents=3000)  # r1's month 2 = [Mar 5, Apr 5): 300 points

    as_of = utc(2026, 3, 10)
    recurring, _ = run_rewards(engine, settings, as_of)

    assert row_by_key(engine, f"recover:{b}:{iso(as_of)}:1").delta == -300
    assert recurring.stats["recovered_points"] == 300
    first, second = rewards_of(engine, c1)[f"recurring:{r1}:1"], rewards_of(engine, c2)[f"recurring:{r2}:1"]
    assert (first.unrecovered_points, first.recovered_points) == (200, 200)
    assert (second.unrecovered_points, second.recovered_points) == (200, 100)
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_a_dry_run_reports_the_recovery_exactly_and_writes_nothing(engine, settings):
    b, c = new_id(), new_id()
    relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    refunded = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))
    refund(engine, refunded)
    pay(engine, c, utc(2026, 3, 5))
    before = job_rows(engine, b)

    dry = run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 3, 10), dry_run=True)
    assert dry.status == "SUCCEEDED", dry.error
    assert job_rows(engine, b) == before
    real, _ = run_rewards(engine, settings, utc(2026, 3, 10))

    for key in ("rows_written", "points_written", "clawed_back_points", "unrecovered_points", "recovered_points"):
        assert dry.stats[key] == real.stats[key], key
    assert real.stats["recovered_points"] == 200


def test_a_run_for_a_past_as_of_does_not_recover_again_what_a_later_run_recovered(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    refunded = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))
    refund(engine, refunded)
    run_rewards(engine, settings, utc(2026, 3, 1))  # 200 unrecovered
    app_points(engine, b, 200, "ADMIN_GRANT", utc(2026, 3, 9))
    run_rewards(engine, settings, utc(2026, 3, 10))  # recovered from the grant
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recover:{b}:{iso(utc(2026, 3, 10))}:1": -200}
    pay(engine, c, utc(2026, 3, 6))  # month 2 = [Mar 5, Apr 5), recorded late

    past, _ = run_rewards(engine, settings, utc(2026, 3, 7))

    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recover:{b}:{iso(utc(2026, 3, 10))}:1": -200,
                                   f"recurring:{r}:2": 200}
    assert past.stats["recovered_points"] == 0
    record = rewards_of(engine, c)[f"recurring:{r}:1"]
    assert (record.unrecovered_points, record.recovered_points) == (200, 200)
    assert ledger_balance(engine, b) == 200
    assert_cache_is_the_ledger(engine, b)


def test_a_level_2_clawback_is_recovered_under_its_own_level(engine, settings):
    a, b, c = new_id(), new_id(), new_id()
    relate(engine, a, b, status="ACTIVE")
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    refunded = pay(engine, c, utc(2026, 1, 5))  # month 0: level 2 only
    run_rewards(engine, settings, utc(2026, 1, 10))
    app_points(engine, a, -100, "REDEMPTION_UNLOCK", utc(2026, 1, 12))

    refund(engine, refunded)
    pay(engine, c, utc(2026, 2, 5))  # month 1
    as_of = utc(2026, 2, 10)
    _, level2 = run_rewards(engine, settings, as_of)

    assert job_rows(engine, a) == {f"l2:{r}:0": 100, f"l2:{r}:1": 100, f"recover:{a}:{iso(as_of)}:2": -100}
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}  # level 1 owes nothing: untouched
    assert (level2.stats["unrecovered_points"], level2.stats["recovered_points"]) == (100, 100)
    assert ledger_balance(engine, a) == 0
    assert_cache_is_the_ledger(engine, a, b)


def refund_reversed_after_an_unrecovered_clawback(engine, settings) -> tuple[uuid.UUID, ...]:
    """B earns 200 for month 1 (Feb 10 run) and spends them; the payment is refunded (the Mar 1 run
    claws back 0, 200 unrecovered); billing reverses the refund: (B, C, relationship, payment)."""
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    payment = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))
    refund(engine, payment)
    first, _ = run_rewards(engine, settings, utc(2026, 3, 1))
    assert (first.stats["clawed_back_points"], first.stats["unrecovered_points"]) == (0, 200)
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}  # nothing to take: no clawback row
    update(engine, "user_subscription_payments", payment, status="PAID")
    return b, c, r, payment


def test_a_refund_reversed_after_an_unrecovered_clawback_pays_the_month_once(engine, settings):
    b, c, r, payment = refund_reversed_after_an_unrecovered_clawback(engine, settings)

    as_of = utc(2026, 3, 2)
    recurring, _ = run_rewards(engine, settings, as_of)

    assert job_rows(engine, b) == {f"recover:{b}:{iso(as_of)}:1": -200, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:1:{payment}": 200}
    assert ledger_balance(engine, b) == 0  # rewards − clawbacks − recoveries = 200: one payment's worth
    assert recurring.stats["recovered_points"] == 200
    records = rewards_of(engine, c)
    assert (records[f"recurring:{r}:1"].unrecovered_points, records[f"recurring:{r}:1"].recovered_points) == (200, 200)
    assert standing(engine, c) == {(1, 1): f"recurring:{r}:1:{payment}"}
    assert_cache_is_the_ledger(engine, b)


def test_with_recovery_off_nothing_is_recovered_and_the_points_stay_written_off(engine, make_settings):
    settings = make_settings(recovery=False)
    b, c, r, payment = refund_reversed_after_an_unrecovered_clawback(engine, settings)

    recurring, level2 = run_rewards(engine, settings, utc(2026, 3, 2))

    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recurring:{r}:1:{payment}": 200}
    assert ledger_balance(engine, b) == 200
    assert recurring.stats.get("recovered_points", 0) == 0
    record = rewards_of(engine, c)[f"recurring:{r}:1"]
    assert (record.unrecovered_points, record.recovered_points) == (200, 0)
    assert_cache_is_the_ledger(engine, b)


def test_recovery_takes_at_most_the_balance_and_a_rerun_of_the_as_of_recovers_the_rest_under_key_2(
        engine, settings):
    b, c, r, payment = refund_reversed_after_an_unrecovered_clawback(engine, settings)
    refund(engine, payment)  # refunded again: the month stays unpaid, 200 outstanding
    run_rewards(engine, settings, utc(2026, 3, 2))
    pay(engine, c, utc(2026, 3, 6), cents=1000)  # month 2 = [Mar 5, Apr 5): 100 points

    as_of = utc(2026, 3, 10)
    first, _ = run_rewards(engine, settings, as_of)
    assert job_rows(engine, b) == {f"recover:{b}:{iso(as_of)}:1": -100, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:2": 100}
    assert first.stats["recovered_points"] == 100
    assert rewards_of(engine, c)[f"recurring:{r}:1"].recovered_points == 100  # 100 still outstanding, balance 0

    back_filled = pay(engine, c, utc(2026, 2, 8, 12))  # a second payment of month 1: it earns again
    second, _ = run_rewards(engine, settings, as_of)  # the same as-of, re-run

    assert job_rows(engine, b) == {
        f"recover:{b}:{iso(as_of)}:1": -100, f"recover:{b}:{iso(as_of)}:1:2": -100,
        f"recurring:{r}:1": 200, f"recurring:{r}:1:{back_filled}": 200, f"recurring:{r}:2": 100}
    assert second.stats["recovered_points"] == 100
    assert ledger_balance(engine, b) == 100
    assert standing(engine, c) == {(1, 1): f"recurring:{r}:1:{back_filled}", (1, 2): f"recurring:{r}:2"}
    record = rewards_of(engine, c)[f"recurring:{r}:1"]
    assert (record.unrecovered_points, record.recovered_points) == (200, 200)
    assert_cache_is_the_ledger(engine, b)


# ── 3. bad rows of a payments view ──────────────────────────────────────────

def test_bad_rows_of_a_payments_view_are_skipped_counted_and_logged_and_every_other_month_is_paid(
        engine, make_settings, capsys):
    a = new_id()
    good, negative, duplicated = new_id(), new_id(), new_id()
    b_good, b_negative, b_duplicated = new_id(), new_id(), new_id()
    relate(engine, a, b_good, status="ACTIVE")
    r_good = relate(engine, b_good, good, rewarded_at=utc(2026, 1, 1))
    r_negative = relate(engine, b_negative, negative, rewarded_at=utc(2026, 1, 1))
    r_duplicated = relate(engine, b_duplicated, duplicated, rewarded_at=utc(2026, 1, 1))
    pay(engine, good, utc(2026, 2, 2))                             # month 1
    pay(engine, negative, utc(2026, 3, 3))                         # month 2
    twice = pay(engine, duplicated, utc(2026, 2, 4))               # month 1, but its id appears twice
    pay(engine, duplicated, utc(2026, 3, 4))                       # month 2
    bad = {name: new_id() for name in ("negative", "null_paid_at", "unknown_status", "null_amount", "null_user")}
    rows = [
        (bad["negative"], negative, "-2000", "'PAID'", "'2026-02-03'"),
        (bad["null_paid_at"], good, "2000", "'PAID'", "NULL"),
        (bad["unknown_status"], good, "9000", "'DISPUTED'", "'2026-04-02'"),
        (bad["null_amount"], good, "NULL", "'PAID'", "'2026-05-02'"),
        (bad["null_user"], None, "2000", "'PAID'", "'2026-02-02'"),
        (twice, duplicated, "3000", "'PAID'", "'2026-02-05'"),
    ]
    extra = " UNION ALL ".join(
        f"SELECT CAST('{row_id}' AS uuid), CAST({sql_literal(user)} AS uuid),"
        f" CAST({cents} AS bigint), CAST({status} AS varchar(20)), CAST({paid_at} AS timestamptz), now()"
        for row_id, user, cents, status, paid_at in rows)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE VIEW public.payments_view AS"
            " SELECT id, user_id, amount_cents, status, paid_at, created_at FROM public.user_subscription_payments"
            f" UNION ALL {extra}"))
    settings = make_settings(payments_table="public.payments_view")

    recurring, level2 = run_rewards(engine, settings, utc(2026, 6, 1))

    assert (recurring.stats["skipped_feed_rows"], level2.stats["skipped_feed_rows"]) == (7, 7)
    assert job_rows(engine, b_good) == {f"recurring:{r_good}:1": 200}
    assert job_rows(engine, a) == {f"l2:{r_good}:1": 100}
    assert job_rows(engine, b_negative) == {f"recurring:{r_negative}:2": 200}
    assert job_rows(engine, b_duplicated) == {f"recurring:{r_duplicated}:2": 200}  # both rows of `twice` skipped
    logged = capsys.readouterr().out
    for row_id in (*bad.values(), twice):  # every skipped row is logged with its payment id
        assert str(row_id) in logged
    assert_cache_is_the_ledger(engine, a, b_good, b_negative, b_duplicated)


# ── 4. an expiry that cannot be stored ──────────────────────────────────────

def test_an_expiry_beyond_the_ledgers_int_is_counted_and_logged_and_the_other_users_expire(engine, settings, capsys):
    """Two lots of 2,000,000,000 are due 4,000,000,000 > INT (the cache could not even hold them);
    a due of exactly INT's maximum is still written."""
    too_big, at_max, small = new_id(), new_id(), new_id()
    for created_at in (utc(2024, 1, 10), utc(2024, 2, 10)):
        app_points(engine, too_big, 2_000_000_000, "ADMIN_GRANT", created_at, update_cache=False)
    app_points(engine, at_max, 2_000_000_000, "ADMIN_GRANT", utc(2024, 1, 10))
    app_points(engine, at_max, INT_MAX - 2_000_000_000, "ADMIN_GRANT", utc(2024, 2, 10))
    app_points(engine, small, 100, "REFERRAL_WELCOME", utc(2024, 3, 10))

    as_of = utc(2026, 1, 1)
    result = expire(engine, settings, as_of)

    assert result.stats["skipped_unstorable"] == 1
    assert job_rows(engine, too_big) == {}
    assert job_rows(engine, at_max) == {f"expiry:{at_max}:{iso(as_of)}": -INT_MAX}
    assert job_rows(engine, small) == {f"expiry:{small}:{iso(as_of)}": -100}
    assert result.stats["users_expired"] == 2
    warnings = [line for line in capsys.readouterr().out.splitlines() if str(too_big) in line]
    assert warnings and any("warn" in line.lower() for line in warnings)
    assert_cache_is_the_ledger(engine, at_max, small)

    again = expire(engine, settings, as_of)
    assert again.stats["skipped_unstorable"] == 1  # still counted, never failing
    assert job_rows(engine, too_big) == {}


# ── 5. clawbacks and expiry ─────────────────────────────────────────────────

def test_a_clawback_does_not_postpone_the_expiry_of_an_older_lot(engine, settings):
    """B's welcome lot of 100 (2025-01-15 09:00) expires 12 months later to the second, though a
    reward of 200 earned since was clawed back."""
    b, c = new_id(), new_id()
    app_points(engine, b, 100, "REFERRAL_WELCOME", utc(2025, 1, 15, 9))
    r = relate(engine, b, c, rewarded_at=utc(2025, 10, 20))
    payment = pay(engine, c, utc(2025, 11, 25))  # month 1 = [Nov 20, Dec 20)
    run_rewards(engine, settings, utc(2025, 12, 1))
    refund(engine, payment)
    run_rewards(engine, settings, utc(2025, 12, 20))
    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200}

    assert "rows_written" not in expire(engine, settings, utc(2026, 1, 15, 9)).stats  # cutoff = the lot's instant
    as_of = utc(2026, 1, 15, 9, 0, 1)
    result = expire(engine, settings, as_of)

    assert row_by_key(engine, f"expiry:{b}:{iso(as_of)}").delta == -100
    assert result.stats["points_written"] == {"EXPIRY": -100}
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def expired_reward(engine, settings, *, spent_first: int = 0, newer_grant: int = 300) -> tuple[uuid.UUID, ...]:
    """B holds a welcome lot of 100 (2025-01-01) and a reward of 200 (the 2025-03-01 run, month 1 of C's
    Feb 5 payment); spends `spent_first` (2025-04-01); expire-points at 2026-03-02 expires the rest; the
    app grants B `newer_grant` newer points (2026-03-05); billing refunds the payment a year late:
    (B, C, relationship, reward key)."""
    b, c = new_id(), new_id()
    app_points(engine, b, 100, "REFERRAL_WELCOME", utc(2025, 1, 1))
    r = relate(engine, b, c, rewarded_at=utc(2025, 1, 5))
    payment = pay(engine, c, utc(2025, 2, 5))
    run_rewards(engine, settings, utc(2025, 3, 1))
    if spent_first:
        app_points(engine, b, -spent_first, "REDEMPTION_QUOTA", utc(2025, 4, 1))
    expire(engine, settings, utc(2026, 3, 2))
    assert row_by_key(engine, f"expiry:{b}:{iso(utc(2026, 3, 2))}").delta == -(300 - spent_first)
    if newer_grant:
        app_points(engine, b, newer_grant, "ADMIN_GRANT", utc(2026, 3, 5))
    refund(engine, payment)
    return b, c, r, f"recurring:{r}:1"


def test_a_reward_that_expired_is_clawed_back_as_expired_and_takes_nothing_from_newer_points(engine, settings):
    b, c, r, key = expired_reward(engine, settings)

    recurring, _ = run_rewards(engine, settings, utc(2026, 3, 10))

    assert row_by_key(engine, f"clawback:{key}") is None  # nothing to take: the 200 are gone already
    record = rewards_of(engine, c)[key]
    assert (record.clawback_key, record.clawed_back_points, record.expired_points, record.unrecovered_points) == (
        f"clawback:{key}", 0, 200, 0)
    assert (recurring.stats["clawed_back_points"], recurring.stats["unrecovered_points"]) == (0, 0)
    assert ledger_balance(engine, b) == 300  # the newer grant untouched
    assert standing(engine, c) == {}

    expired = expire(engine, settings, utc(2027, 3, 6))  # the grant's own expiry, on time and whole
    assert expired.stats["points_written"] == {"EXPIRY": -300}
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_a_reward_partly_spent_and_partly_expired_is_clawed_back_for_its_spent_part_only(engine, settings):
    """Of the reward's 200 (stacked after the welcome 100), the redemption of 150 consumed 50 and the
    expiry the other 150: the clawback takes 50."""
    b, c, r, key = expired_reward(engine, settings, spent_first=150)

    recurring, _ = run_rewards(engine, settings, utc(2026, 3, 10))

    assert row_by_key(engine, f"clawback:{key}").delta == -50
    record = rewards_of(engine, c)[key]
    assert (record.clawed_back_points, record.expired_points, record.unrecovered_points) == (50, 150, 0)
    assert (recurring.stats["clawed_back_points"], recurring.stats["unrecovered_points"]) == (50, 0)
    assert ledger_balance(engine, b) == 250

    expired = expire(engine, settings, utc(2027, 3, 6))  # lots 100 + (200 − 50) + 300, debits 150 + 150
    assert expired.stats["points_written"] == {"EXPIRY": -250}
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_only_the_unexpired_part_of_a_clawed_back_reward_is_owed_and_recovered(engine, settings):
    """As above, but B's balance is 0 at the clawback: of the reward's 200, 150 expired (not owed) and
    50 are unrecovered; once the app grants B 300, the next reward run recovers those 50, no more."""
    b, c, r, key = expired_reward(engine, settings, spent_first=150, newer_grant=0)

    recurring, _ = run_rewards(engine, settings, utc(2026, 3, 10))
    assert row_by_key(engine, f"clawback:{key}") is None
    record = rewards_of(engine, c)[key]
    assert (record.clawed_back_points, record.expired_points, record.unrecovered_points) == (0, 150, 50)
    assert recurring.stats["unrecovered_points"] == 50

    app_points(engine, b, 300, "ADMIN_GRANT", utc(2026, 3, 12))
    as_of = utc(2026, 3, 20)
    recovering, _ = run_rewards(engine, settings, as_of)

    assert row_by_key(engine, f"recover:{b}:{iso(as_of)}:1").delta == -50
    assert recovering.stats["recovered_points"] == 50
    assert rewards_of(engine, c)[key].recovered_points == 50
    assert ledger_balance(engine, b) == 250
    assert_cache_is_the_ledger(engine, b)


def test_a_run_for_an_as_of_before_a_reward_does_not_claw_it_back_and_the_next_run_does(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    payment = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 3, 1))  # the reward is dated Mar 1 00:00
    refund(engine, payment)

    past, _ = run_rewards(engine, settings, utc(2026, 2, 28, 23, 59, 59))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200}
    assert past.stats["clawbacks"] == 0 and "rows_written" not in past.stats
    assert standing(engine, c) == {(1, 1): f"recurring:{r}:1"}

    run_rewards(engine, settings, utc(2026, 3, 1))  # at the reward's own instant
    clawback = row_by_key(engine, f"clawback:recurring:{r}:1")
    assert (clawback.delta, clawback.created_at) == (-200, utc(2026, 3, 1))
    assert rewards_of(engine, c)[f"recurring:{r}:1"].clawed_back_at == utc(2026, 3, 1)
    assert_cache_is_the_ledger(engine, b)


def test_a_run_for_a_past_as_of_does_not_recover_a_clawback_dated_after_it(engine, settings):
    b, c = new_id(), new_id()
    r = relate(engine, b, c, rewarded_at=utc(2026, 1, 5))
    refunded = pay(engine, c, utc(2026, 2, 5))
    run_rewards(engine, settings, utc(2026, 2, 10))
    app_points(engine, b, -200, "REDEMPTION_QUOTA", utc(2026, 2, 12))
    refund(engine, refunded)
    run_rewards(engine, settings, utc(2026, 3, 10))  # 200 unrecovered, dated Mar 10
    pay(engine, c, utc(2026, 3, 6))  # month 2 = [Mar 5, Apr 5), recorded late

    past, _ = run_rewards(engine, settings, utc(2026, 3, 7))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recurring:{r}:2": 200}
    assert past.stats["recovered_points"] == 0
    assert ledger_balance(engine, b) == 200

    later, _ = run_rewards(engine, settings, utc(2026, 3, 11))
    assert job_rows(engine, b) == {f"recover:{b}:{iso(utc(2026, 3, 11))}:1": -200, f"recurring:{r}:1": 200,
                                   f"recurring:{r}:2": 200}
    assert later.stats["recovered_points"] == 200
    assert_cache_is_the_ledger(engine, b)


def test_a_recovery_consumes_the_oldest_lots_like_any_debit(engine, settings):
    """B: welcome 100 (2025-01-10); reward 200 (Jun 1) spent with the welcome points (300, Jun 5); its
    refund leaves 200 unrecovered (Jun 10); the next month's 200 (Jul 1) is recovered the same run; a
    grant of 100 (Dec 1). At 2026-07-02 every lot but the grant is past its cutoff, and the redemption
    and the recovery consumed them all: nothing is due. The grant expires on its own date."""
    b, c = new_id(), new_id()
    app_points(engine, b, 100, "REFERRAL_WELCOME", utc(2025, 1, 10))
    r = relate(engine, b, c, rewarded_at=utc(2025, 4, 20))
    refunded = pay(engine, c, utc(2025, 5, 25))  # month 1 = [May 20, Jun 20)
    run_rewards(engine, settings, utc(2025, 6, 1))
    app_points(engine, b, -300, "REDEMPTION_UNLOCK", utc(2025, 6, 5))
    refund(engine, refunded)
    run_rewards(engine, settings, utc(2025, 6, 10))
    pay(engine, c, utc(2025, 6, 25))  # month 2 = [Jun 20, Jul 20)
    run_rewards(engine, settings, utc(2025, 7, 1))
    assert job_rows(engine, b) == {f"recurring:{r}:1": 200, f"recurring:{r}:2": 200,
                                   f"recover:{b}:{iso(utc(2025, 7, 1))}:1": -200}
    app_points(engine, b, 100, "ADMIN_GRANT", utc(2025, 12, 1))

    assert "rows_written" not in expire(engine, settings, utc(2026, 7, 2)).stats
    assert ledger_balance(engine, b) == 100

    assert expire(engine, settings, utc(2026, 12, 2)).stats["points_written"] == {"EXPIRY": -100}
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


@pytest.mark.parametrize("order", ["earlier as-of first", "later as-of first"])
def test_expire_points_for_an_as_of_before_a_clawback_expires_exactly_the_older_lot(engine, settings, order):
    """B's welcome lot of 100 (2025-01-10), a reward of 200 (2025-02-01) clawed back on 2026-03-01.
    Expire-points at 2026-01-15 (cutoff 2025-01-15: the welcome lot only) and at 2026-06-01 (both lots,
    the reward's reduced to 0 by its own clawback) expire 100 together, whatever their order."""
    b, c = new_id(), new_id()
    app_points(engine, b, 100, "REFERRAL_WELCOME", utc(2025, 1, 10))
    r = relate(engine, b, c, rewarded_at=utc(2024, 12, 20))
    payment = pay(engine, c, utc(2025, 1, 25))  # month 1 = [Jan 20, Feb 20)
    run_rewards(engine, settings, utc(2025, 2, 1))
    refund(engine, payment)
    run_rewards(engine, settings, utc(2026, 3, 1))
    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200}

    earlier, later = utc(2026, 1, 15), utc(2026, 6, 1)
    for as_of in ((earlier, later) if order == "earlier as-of first" else (later, earlier)):
        expire(engine, settings, as_of)

    expiries = {key: delta for key, delta in job_rows(engine, b).items() if key.startswith("expiry:")}
    first = earlier if order == "earlier as-of first" else later
    assert expiries == {f"expiry:{b}:{iso(first)}": -100}
    assert ledger_balance(engine, b) == 0
    assert_cache_is_the_ledger(engine, b)


def test_expiring_soon_warns_of_an_older_lot_a_clawback_does_not_postpone(engine, make_settings):
    """B's welcome lot of 100 (2025-06-10 12:00) expires on 2026-06-10; a reward of 200 earned on
    2026-05-01 and clawed back on 2026-05-20 changes nothing about it."""
    settings = make_settings(expiry_notice_days=30)
    b, c = new_id(), new_id()
    app_points(engine, b, 100, "REFERRAL_WELCOME", utc(2025, 6, 10, 12))
    r = relate(engine, b, c, rewarded_at=utc(2026, 3, 15))
    payment = pay(engine, c, utc(2026, 4, 20))  # month 1 = [Apr 15, May 15)
    run_rewards(engine, settings, utc(2026, 5, 1))
    refund(engine, payment)
    run_rewards(engine, settings, utc(2026, 5, 20))
    assert job_rows(engine, b) == {f"clawback:recurring:{r}:1": -200, f"recurring:{r}:1": 200}

    as_of = utc(2026, 6, 1)
    result = run_job(expiring_soon.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error

    path = settings.reports_dir / f"expiring-{as_of:%Y%m%dT%H%M%SZ}-{result.run_id}.csv"
    assert path.read_text().splitlines() == ["user_id,points,expires_on,balance", f"{b},100,2026-06-10,100"]
    assert (result.stats["users"], result.stats["points"]) == (1, 100)
    # expire-points then expires exactly what was announced, at the announced instant
    assert "rows_written" not in expire(engine, settings, utc(2026, 6, 10, 12)).stats
    assert expire(engine, settings, utc(2026, 6, 10, 12, 0, 1)).stats["points_written"] == {"EXPIRY": -100}


# ── 6. a relationship deleted and re-inserted ───────────────────────────────

def delete_relationship(engine, relationship: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.user_referral_relationships WHERE id = :id"), {"id": relationship})


def test_a_relationship_deleted_and_re_inserted_earns_only_the_months_not_standing(engine, settings):
    a, b, c = new_id(), new_id(), new_id()
    relate(engine, a, b, status="ACTIVE")
    old = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    for paid_at in (utc(2026, 1, 10), utc(2026, 2, 12), utc(2026, 3, 12)):  # months 0, 1, 2
        pay(engine, c, paid_at)
    run_rewards(engine, settings, utc(2026, 3, 20))
    delete_relationship(engine, old)

    between = run_rewards(engine, settings, utc(2026, 3, 25))  # no current relationship: nothing moves
    assert all("rows_written" not in result.stats and result.stats["clawbacks"] == 0 for result in between)
    new = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 4, 12))  # month 3
    run_rewards(engine, settings, utc(2026, 4, 20))

    assert job_rows(engine, b) == {f"recurring:{old}:1": 200, f"recurring:{old}:2": 200,
                                          f"recurring:{new}:3": 200}
    assert job_rows(engine, a) == {f"l2:{old}:0": 100, f"l2:{old}:1": 100, f"l2:{old}:2": 100,
                                          f"l2:{new}:3": 100}
    assert standing(engine, c) == {(1, 1): f"recurring:{old}:1", (1, 2): f"recurring:{old}:2",
                                   (1, 3): f"recurring:{new}:3", (2, 0): f"l2:{old}:0", (2, 1): f"l2:{old}:1",
                                   (2, 2): f"l2:{old}:2", (2, 3): f"l2:{new}:3"}
    assert rewards_of(engine, c)[f"recurring:{new}:3"].relationship_id == new
    assert_cache_is_the_ledger(engine, a, b)


def test_a_reward_of_a_deleted_relationship_is_still_clawed_back_when_its_payment_is_refunded(engine, settings):
    b, c = new_id(), new_id()
    old = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    basis = pay(engine, c, utc(2026, 2, 12))
    run_rewards(engine, settings, utc(2026, 3, 1))
    delete_relationship(engine, old)
    refund(engine, basis)

    run_rewards(engine, settings, utc(2026, 3, 2))

    assert job_rows(engine, b) == {f"recurring:{old}:1": 200, f"clawback:recurring:{old}:1": -200}
    assert row_by_key(engine, f"clawback:recurring:{old}:1").ref_id == old
    assert standing(engine, c) == {}
    assert_cache_is_the_ledger(engine, b)


def test_a_re_inserted_relationship_with_a_new_referrer_pays_only_new_months_to_it(engine, settings):
    b, new_referrer, c = new_id(), new_id(), new_id()
    old = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 2, 12))
    run_rewards(engine, settings, utc(2026, 3, 1))
    delete_relationship(engine, old)
    new = relate(engine, new_referrer, c, rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 3, 12))  # month 2

    run_rewards(engine, settings, utc(2026, 4, 1))

    assert job_rows(engine, b) == {f"recurring:{old}:1": 200}  # written rewards stay with their beneficiary
    assert job_rows(engine, new_referrer) == {f"recurring:{new}:2": 200}
    assert_cache_is_the_ledger(engine, b, new_referrer)


def test_a_month_standing_from_the_deleted_row_is_clawed_back_under_its_key_and_earns_again_under_the_new_id(
        engine, settings):
    b, c = new_id(), new_id()
    old = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    basis = pay(engine, c, utc(2026, 2, 12))
    later = pay(engine, c, utc(2026, 2, 25), cents=3000)  # month 1 too
    run_rewards(engine, settings, utc(2026, 3, 1))
    delete_relationship(engine, old)
    new = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    refund(engine, basis)

    run_rewards(engine, settings, utc(2026, 3, 2))

    assert job_rows(engine, b) == {f"clawback:recurring:{old}:1": -200, f"recurring:{old}:1": 200,
                                          f"recurring:{new}:1": 300}
    assert row_by_key(engine, f"clawback:recurring:{old}:1").ref_id == old
    assert standing(engine, c) == {(1, 1): f"recurring:{new}:1"}
    assert rewards_of(engine, c)[f"recurring:{new}:1"].payment_id == later
    assert ledger_balance(engine, b) == 300
    assert_cache_is_the_ledger(engine, b)


def test_a_relationship_re_inserted_with_another_rewarded_at_moves_the_standing_months_to_the_new_grid(
        engine, settings):
    """Old grid (Jan 10): month 1 holds Feb 12, month 2 Mar 12. Re-inserted with rewarded_at Jan 20:
    Feb 12 lies in month 0, Mar 12 in month 1 [Feb 20, Mar 20), month 2 is unpaid."""
    b, c = new_id(), new_id()
    old = relate(engine, b, c, rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 2, 12))
    march = pay(engine, c, utc(2026, 3, 12))
    run_rewards(engine, settings, utc(2026, 3, 15))
    delete_relationship(engine, old)
    new = relate(engine, b, c, rewarded_at=utc(2026, 1, 20))

    run_rewards(engine, settings, utc(2026, 3, 16))

    assert job_rows(engine, b) == {
        f"recurring:{old}:1": 200, f"recurring:{old}:2": 200,
        f"clawback:recurring:{old}:1": -200, f"clawback:recurring:{old}:2": -200,
        f"recurring:{new}:1": 200}
    assert standing(engine, c) == {(1, 1): f"recurring:{new}:1"}
    assert rewards_of(engine, c)[f"recurring:{new}:1"].payment_id == march
    assert ledger_balance(engine, b) == 200
    assert_cache_is_the_ledger(engine, b)


# ── issue 28: a reward key the ledger already holds with another amount ─────

@pytest.mark.parametrize("forged_keys", [1, 2])
def test_a_reward_key_pre_inserted_with_another_amount_is_never_taken_as_paid(engine, settings, capsys, forged_keys):
    b, c = new_id(), new_id()
    relationship = relate(engine, b, c, rewarded_at=utc(2026, 1, 1))
    payment = pay(engine, c, utc(2026, 2, 2))                      # month 1: 200 points owed
    first_key = f"recurring:{relationship}:1"
    forged = [first_key, f"{first_key}:{payment}"][:forged_keys]
    with engine.begin() as conn:
        for key in forged:
            conn.execute(text(
                "INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)"
                " VALUES (:user, 1, 'REFERRAL_RECURRING', :ref, :key, :at)"),
                {"user": b, "ref": relationship, "key": key, "at": utc(2026, 2, 3)})
        conn.execute(text("INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent)"
                          " VALUES (:user, :n, :n, 0)"), {"user": b, "n": forged_keys})

    first = run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 6, 1))
    again = run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 6, 2))

    paid_under = [first_key, f"{first_key}:{payment}", f"{first_key}:{payment}:2"][forged_keys]
    assert (first.stats["conflicting_keys"], again.stats["conflicting_keys"]) == (forged_keys, 0)
    assert set(rewards_of(engine, c)) == {paid_under}              # the month is paid once, under its next key
    assert job_rows(engine, b) == {**{key: 1 for key in forged}, paid_under: 200}
    assert_cache_is_the_ledger(engine, b)
    logged = capsys.readouterr().out
    assert all(key in logged for key in forged) and "another user, type or amount" in logged
