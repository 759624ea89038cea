"""Both reward jobs against a straightforward Python reference of SPEC.md's rules, on random data.

Whatever the data, settings, batch size and sequence of as-of dates the runs are made for, the
ledger ends as the reference computes it for one clean run at the latest as-of, the balance cache
agrees, a dry run first reports exactly that, and a rerun writes nothing.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import text

from core.runner import run_job
from jobs import level2_rewards, recurring_rewards
from jobs.settings import RewardAmount
from tests.builders import add_relationship, balance_of, utc
from tests.reference import Relationship, add_months, earning_beneficiary

# ── the reference ───────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Payment:
    id: uuid.UUID
    user: uuid.UUID
    paid_at: datetime
    status: str
    cents: int


def reward_points(amount: RewardAmount, points_per_usd: Decimal, cents: int) -> int:
    if amount.points is not None:
        return amount.points
    return int((Decimal(cents) * amount.percent * points_per_usd) // 10000)


def basis_payment(payments: list[Payment], user: uuid.UUID, start: datetime, end: datetime,
                  as_of: datetime) -> Payment | None:
    paid = [p for p in payments
            if p.user == user and p.status == "PAID" and start <= p.paid_at < end and p.paid_at <= as_of]
    return min(paid, key=lambda p: (p.paid_at, p.id), default=None)


def expected_ledger(relationships: list[Relationship], payments: list[Payment], config, as_of: datetime) -> dict:
    """{idempotency key: (user, delta, type, ref_id)} of one clean run of both jobs at `as_of`."""
    by_referred = {r.referred: r for r in relationships}
    rows = {}

    def reward(r, beneficiary, months, amount, prefix, ledger_type):
        for k in months:
            basis = basis_payment(payments, r.referred, add_months(r.rewarded_at, k),
                                  add_months(r.rewarded_at, k + 1), as_of)
            points = reward_points(amount, config.points_per_usd, basis.cents) if basis else 0
            if points > 0:
                rows[f"{prefix}:{r.id}:{k}"] = (beneficiary, points, ledger_type, r.id)

    for r in relationships:
        if r.status != "REWARDED" or r.rewarded_at is None:
            continue
        if r.level == 1 and r.referrer != r.referred:
            reward(r, r.referrer, range(1, config.recurring_months + 1), config.recurring_reward,
                   "recurring", "REFERRAL_RECURRING")
        beneficiary = earning_beneficiary(r, 2, by_referred)
        if beneficiary is not None:
            reward(r, beneficiary, range(0, config.l2_months), config.l2_reward, "l2", "REFERRAL_L2")
    return rows


# ── random data ─────────────────────────────────────────────────────────────

FIRST_PAYMENTS = [utc(2024, 1, 31, 12), utc(2024, 2, 29), utc(2025, 1, 31), utc(2025, 3, 31, 23, 59, 59),
                  utc(2025, 6, 15, 8, 30)]
# Payments fall around month starts: a second before, exactly at, a day and two weeks after.
SHIFTS = (timedelta(seconds=-1), timedelta(0), timedelta(days=1), timedelta(days=15))
AS_OFS = sorted({add_months(start, k) + shift for start in FIRST_PAYMENTS for k in range(0, 15, 2)
                 for shift in SHIFTS})
USERS = 5

payment_strategy = st.tuples(  # (month k from the first payment, shift, status, amount in cents)
    st.sampled_from([1, 2, 3, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, -1]),
    st.sampled_from([SHIFTS[2], SHIFTS[0], SHIFTS[1], SHIFTS[3]]),
    st.sampled_from(["PAID"] * 6 + ["REFUNDED", "FAILED"]),
    st.sampled_from([2000, 12345, 999, 100_000, 250_050, 5]),
)
relationship_strategy = st.fixed_dictionaries({
    # referrer = referred + offset (mod USERS): 1 makes chains, 0 self-referrals, others cycles too
    "referrer_offset": st.sampled_from([1, 1, 1, 2, 0, 3, 4]),
    "level": st.sampled_from([1, 1, 1, 2]),
    "status": st.sampled_from(["REWARDED"] * 7 + ["ACTIVE", "PENDING", "EXPIRED"]),
    "first_payment": st.sampled_from(FIRST_PAYMENTS),
    "rewarded_at_missing": st.sampled_from([False] * 14 + [True]),
    "payments": st.lists(payment_strategy, min_size=8, max_size=24),
})
config_strategy = st.fixed_dictionaries({
    # The first choice of each is the richest: hypothesis starts from (and shrinks towards) it.
    "recurring_months": st.sampled_from([12, 12, 12, 3, 1, 0]),
    "l2_months": st.sampled_from([6, 6, 6, 1, 0]),
    "recurring_reward": st.sampled_from(["10%", "2.5%", "33.3%", "150", "10%", "2.5%", "0"]),
    "l2_reward": st.sampled_from(["5%", "0.5%", "100%", "7", "5%", "0.5%", "0%"]),
    "points_per_usd": st.sampled_from([Decimal("100"), Decimal("1.5"), Decimal("7")]),
    "batch_size": st.sampled_from([2, 1, 5000]),
})


def _reset(engine) -> None:
    """Each example starts with no relationships, payments or runs; ledger rows of earlier examples
    belong to other users and relationships (the ledger is append-only)."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.user_referral_relationships"))
        conn.execute(text("DELETE FROM public.user_subscription_payments"))
        conn.execute(text("DELETE FROM public.job_runs"))
        conn.execute(text("DELETE FROM public.referral_rewards"))  # their payments are gone with the example


def _store(engine, relationships: list[Relationship], payments: list[Payment]) -> None:
    with engine.begin() as conn:
        for r in relationships:
            add_relationship(conn, referrer=r.referrer, referred=r.referred, level=r.level, status=r.status,
                             rewarded_at=r.rewarded_at)
            conn.execute(text("UPDATE public.user_referral_relationships SET id = :id WHERE referred_user_id = :user"),
                         {"id": r.id, "user": r.referred})
        for p in payments:
            conn.execute(text(
                "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                " VALUES (:id, :user, :cents, :status, :paid_at)"
            ), {"id": p.id, "user": p.user, "cents": p.cents, "status": p.status, "paid_at": p.paid_at})


def _ledger(engine, relationship_ids: list[uuid.UUID]) -> dict:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT idempotency_key, user_id, delta, type, ref_id FROM public.user_point_transactions"
            " WHERE ref_id = ANY(CAST(:ids AS uuid[]))"
        ), {"ids": [str(i) for i in relationship_ids]})
        return {row.idempotency_key: (row.user_id, row.delta, row.type, row.ref_id) for row in rows}


def _run_both(engine, config, as_of: datetime, *, dry_run: bool = False) -> dict:
    """{ledger type: (rows, points)} the two jobs wrote (or, in a dry run, would write)."""
    written = {}
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        result = run_job(job, settings=config, engine=engine, as_of=as_of, dry_run=dry_run)
        assert result.status == "SUCCEEDED", result.error
        for ledger_type, rows in result.stats.get("rows_written", {}).items():
            written[ledger_type] = (rows, result.stats["points_written"][ledger_type])
    return written


@pytest.mark.slow
@hypothesis_settings(max_examples=25, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(relationships=st.dictionaries(st.integers(0, USERS - 1), relationship_strategy, min_size=3, max_size=USERS),
       config=config_strategy,
       late_as_of=st.sampled_from([as_of for as_of in AS_OFS if as_of >= utc(2025, 6, 1)]),
       other_as_ofs=st.lists(st.sampled_from(AS_OFS), max_size=3),
       late_position=st.integers(0, 3))
def test_any_sequence_of_runs_leaves_the_ledger_of_one_clean_run_at_the_latest_as_of(
        engine, make_settings, relationships, config, late_as_of, other_as_ofs, late_position):
    as_ofs = [*other_as_ofs[:late_position], late_as_of, *other_as_ofs[late_position:]]
    _reset(engine)
    users = [uuid.uuid4() for _ in range(USERS)]
    stored_relationships = [
        Relationship(uuid.uuid4(), users[(referred + r["referrer_offset"]) % USERS], users[referred],
                     r["level"], r["status"],
                     None if r["status"] != "REWARDED" or r["rewarded_at_missing"] else r["first_payment"])
        for referred, r in relationships.items()
    ]
    stored_payments = [
        Payment(uuid.uuid4(), users[referred], add_months(r["first_payment"], k) + shift, status, cents)
        for referred, r in relationships.items() for k, shift, status, cents in r["payments"]
    ]
    _store(engine, stored_relationships, stored_payments)
    settings = make_settings(**config)
    latest = max(as_ofs)
    expected = expected_ledger(stored_relationships, stored_payments, settings, latest)
    event(f"{len(expected) // 10 * 10}+ rows expected")
    expected_by_type: dict[str, tuple[int, int]] = {}
    for _, delta, ledger_type, _ in expected.values():
        rows, points = expected_by_type.get(ledger_type, (0, 0))
        expected_by_type[ledger_type] = (rows + 1, points + delta)

    assert _run_both(engine, settings, latest, dry_run=True) == expected_by_type
    for as_of in as_ofs:
        _run_both(engine, settings, as_of)
    assert _run_both(engine, settings, latest) == {}

    assert _ledger(engine, [r.id for r in stored_relationships]) == expected
    with engine.connect() as conn:
        for user in users:
            points = sum(delta for beneficiary, delta, _, _ in expected.values() if beneficiary == user)
            cached = balance_of(conn, user)
            assert (tuple(cached) if cached else (0, 0, 0)) == (points, points, 0)


def test_reference_month_arithmetic_clamps_like_postgresql(engine):
    instants = [utc(2024, 1, 31, 12), utc(2025, 1, 31), utc(2025, 3, 31, 23, 59, 59), utc(2024, 2, 29)]
    with engine.connect() as conn:
        for instant in instants:
            for months in (1, 2, 12, 13):
                in_postgres = conn.execute(text("SELECT CAST(:t AS timestamptz) + make_interval(months => :m)"),
                                           {"t": instant, "m": months}).scalar_one()
                assert add_months(instant, months) == in_postgres
