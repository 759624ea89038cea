"""Exact under any history: random histories of late data against a from-scratch recomputation.

A history interleaves, in random order: relationships created late and advanced late (PENDING →
ACTIVE → REWARDED, parents too), payments recorded late, FAILED payments turned PAID, PAID ones
refunded or removed from the feed, redemptions by the app, and runs of both reward jobs at random
as-of instants, re-runs of past dates included. After a final run at the latest as-of, every
(relationship, level, month) must hold exactly one standing reward of a PAID payment of that month
when the month is paid (computed from scratch from the data as it is now) and none when it is not;
rewards − clawbacks − unrecovered must balance; the ledger, `referral_rewards` and the balance cache
must agree; and no balance is below zero.
"""
from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import text

from core.runner import run_job
from jobs import level2_rewards, recurring_rewards
from tests.builders import add_app_points, utc
from tests.integration.test_rewards_property import Payment, Relationship, add_months, level2_beneficiary, reward_points

USERS = 6
FIRST_PAYMENT = {0: utc(2025, 1, 31, 12), 1: utc(2025, 2, 28), 2: utc(2025, 3, 15, 8, 30),
                 3: utc(2025, 1, 1), 4: utc(2025, 4, 30, 23, 59, 59), 5: utc(2025, 2, 10)}
SHIFTS = (timedelta(seconds=-1), timedelta(0), timedelta(days=1), timedelta(days=12))
AS_OFS = [utc(2025, 3, 1), utc(2025, 5, 17), utc(2025, 8, 1), utc(2025, 10, 31, 12), utc(2026, 1, 1),
          utc(2026, 3, 3), utc(2026, 6, 1)]

relate_strategy = st.tuples(st.just("relate"), st.integers(0, USERS - 1), st.sampled_from([1, 1, 1, 2, 0, 3]),
                            st.sampled_from([1, 1, 1, 2]), st.sampled_from(["PENDING", "ACTIVE", "REWARDED"]))
# Months cluster on a few values, so that months often hold several payments (re-earning needs two).
pay_strategy = st.tuples(st.just("pay"), st.integers(0, USERS - 1), st.sampled_from([1, 2, 0, 1, 2, 3, 5, 12, 13, -1]),
                         st.sampled_from(SHIFTS),
                         st.sampled_from(["PAID", "PAID", "PAID", "FAILED"]), st.sampled_from([2000, 999, 12345, 5]))
run_strategy = st.tuples(st.just("run"), st.sampled_from(AS_OFS))
refund_strategy = st.tuples(st.just("refund"), st.integers(0, 40))
# Repetition weights the events: runs, payments and refunds are what late histories are made of.
event_strategy = st.one_of(
    relate_strategy, run_strategy, run_strategy, run_strategy, pay_strategy, pay_strategy, pay_strategy,
    refund_strategy, refund_strategy, refund_strategy,
    st.tuples(st.just("advance"), st.integers(0, USERS - 1)),
    st.tuples(st.just("advance"), st.integers(0, USERS - 1)),
    st.tuples(st.just("settle"), st.integers(0, 40)),
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("redeem"), st.integers(0, USERS - 1), st.sampled_from([1.0, 0.5, 0.9])),
)


class History:
    """The world of one example, kept in the database and mirrored here for the recomputation."""

    def __init__(self, engine, settings) -> None:
        self.engine, self.settings = engine, settings
        self.users = [uuid.uuid4() for _ in range(USERS)]
        self.relationships: dict[int, dict] = {}
        self.payments: list[Payment] = []
        self.latest_as_of = AS_OFS[0]

    def apply(self, event: tuple) -> None:
        getattr(self, "_" + event[0])(*event[1:])

    def _relate(self, referred: int, offset: int, level: int, status: str) -> None:
        if referred in self.relationships:
            return
        rewarded_at = FIRST_PAYMENT[referred] if status == "REWARDED" else None
        row = {"id": uuid.uuid4(), "referrer": self.users[(referred + offset) % USERS],
               "referred": self.users[referred], "level": level, "status": status, "rewarded_at": rewarded_at}
        self.relationships[referred] = row
        self._sql("INSERT INTO public.user_referral_relationships (id, referrer_user_id, referred_user_id,"
                  " referral_code, level, status, rewarded_at) VALUES (:id, :referrer, :referred, 'C', :level,"
                  " :status, :rewarded_at)", row)

    def _advance(self, referred: int) -> None:
        row = self.relationships.get(referred)
        if row is None or row["status"] == "REWARDED":
            return
        row["status"] = "ACTIVE" if row["status"] == "PENDING" else "REWARDED"
        row["rewarded_at"] = FIRST_PAYMENT[referred] if row["status"] == "REWARDED" else None
        self._sql("UPDATE public.user_referral_relationships SET status = :status, rewarded_at = :rewarded_at"
                  " WHERE id = :id", row)

    def _pay(self, user: int, month: int, shift: timedelta, status: str, cents: int) -> None:
        payment = Payment(uuid.uuid4(), self.users[user], add_months(FIRST_PAYMENT[user], month) + shift,
                          status, cents)
        self.payments.append(payment)
        self._sql("INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                  " VALUES (:id, :user, :cents, :status, :paid_at)", payment.__dict__)

    def _set_status(self, index: int, before: str, after: str) -> None:
        """The index-th payment (modulo their number) of those in status `before` goes to `after`."""
        positions = [i for i, p in enumerate(self.payments) if p.status == before]
        if not positions:
            return
        position = positions[index % len(positions)]
        payment = self.payments[position]
        self.payments[position] = Payment(payment.id, payment.user, payment.paid_at, after, payment.cents)
        self._sql("UPDATE public.user_subscription_payments SET status = :status WHERE id = :id",
                  {"status": after, "id": payment.id})

    def _refund(self, index: int) -> None:
        self._set_status(index, "PAID", "REFUNDED")

    def _settle(self, index: int) -> None:
        self._set_status(index, "FAILED", "PAID")

    def _remove(self, index: int) -> None:
        if self.payments:
            payment = self.payments.pop(index % len(self.payments))
            self._sql("DELETE FROM public.user_subscription_payments WHERE id = :id", {"id": payment.id})

    def _redeem(self, user: int, share: float) -> None:
        """The app spends part of the user's balance (never more than it holds)."""
        with self.engine.begin() as conn:
            balance = conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                        " WHERE user_id = :user"), {"user": self.users[user]}).scalar_one()
            points = int(balance * share)
            if points > 0:
                add_app_points(conn, user=self.users[user], delta=-points, type="REDEMPTION_QUOTA",
                               created_at=self.latest_as_of)

    def _run(self, as_of: datetime) -> None:
        self.latest_as_of = max(self.latest_as_of, as_of)
        for job in (recurring_rewards.JOB, level2_rewards.JOB):
            result = run_job(job, settings=self.settings, engine=self.engine, as_of=as_of)
            assert result.status == "SUCCEEDED", result.error

    def _sql(self, statement: str, params: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(text(statement), params)

    # ── the recomputation from scratch ──────────────────────────────────────

    def paid_months(self) -> dict[tuple[uuid.UUID, int, int], list[Payment]]:
        """{(relationship, level, month): its qualifying PAID payments} for every paid month now."""
        counts_until = self.latest_as_of - timedelta(days=self.settings.reward_hold_days)
        stored = [Relationship(r["id"], r["referrer"], r["referred"], r["level"], r["status"], r["rewarded_at"])
                  for r in self.relationships.values()]
        by_referred = {r.referred: r for r in stored}
        paid = {}
        for r in stored:
            if r.status != "REWARDED":
                continue
            levels = []
            if r.level == 1 and r.referrer != r.referred:
                levels.append((1, range(1, self.settings.recurring_months + 1)))
            if level2_beneficiary(r, by_referred) is not None:
                levels.append((2, range(0, self.settings.l2_months)))
            for level, months in levels:
                for k in months:
                    start, end = add_months(r.rewarded_at, k), add_months(r.rewarded_at, k + 1)
                    qualifying = [p for p in self.payments if p.user == r.referred and p.status == "PAID"
                                  and start <= p.paid_at < end and p.paid_at <= counts_until]
                    if qualifying:
                        paid[(r.id, level, k)] = qualifying
        return paid


def _reset(engine) -> None:
    with engine.begin() as conn:
        for table in ("user_referral_relationships", "user_subscription_payments", "job_runs", "referral_rewards"):
            conn.execute(text(f"DELETE FROM public.{table}"))


def _rewards(engine, relationship_ids: list[uuid.UUID]) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT * FROM public.referral_rewards WHERE relationship_id = ANY(CAST(:ids AS uuid[]))"
        ), {"ids": [str(i) for i in relationship_ids]}))


def _ledger_by_key(engine, users: list[uuid.UUID]) -> dict[str, tuple]:
    with engine.connect() as conn:
        return {row.idempotency_key: (row.user_id, row.delta, row.type) for row in conn.execute(text(
            "SELECT idempotency_key, user_id, delta, type FROM public.user_point_transactions"
            " WHERE user_id = ANY(CAST(:users AS uuid[])) AND type IN"
            " ('REFERRAL_RECURRING', 'REFERRAL_L2', 'REFERRAL_CLAWBACK')"
        ), {"users": [str(u) for u in users]})}


def check_exact(history: History) -> None:
    engine, settings = history.engine, history.settings
    rewards = _rewards(engine, [r["id"] for r in history.relationships.values()])
    paid = history.paid_months()

    event(f"paid months: {min(len(paid), 20) // 5 * 5}+")
    event(f"clawed back: {any(row.clawback_key for row in rewards)}")
    event(f"re-earned: {any(row.idempotency_key.count(':') > 2 for row in rewards)}")
    standing = defaultdict(list)
    net = defaultdict(int)
    for row in rewards:
        month = (row.relationship_id, row.level, row.month)
        net[month] += row.points - row.clawed_back_points - row.unrecovered_points
        if row.clawback_key is None:
            standing[month].append(row)
    for month in set(paid) | set(standing) | set(net):
        amount = settings.recurring_reward if month[1] == 1 else settings.l2_reward
        price = {p.id: reward_points(amount, settings.points_per_usd, p.cents) for p in paid.get(month, [])}
        earliest = min(paid.get(month, []), key=lambda p: (p.paid_at, p.id), default=None)
        if month in paid and (standing[month] or price[earliest.id] > 0):
            assert len(standing[month]) == 1, f"month {month} is paid but holds {len(standing[month])} rewards"
            reward = standing[month][0]
            assert reward.payment_id in price, f"month {month} stands on a payment that does not qualify"
            assert reward.points == price[reward.payment_id]
            assert net[month] == reward.points
        else:  # not paid, or its basis is worth 0 points: nothing to write
            assert standing[month] == [], f"month {month} is not paid but holds a reward"
            assert net[month] == 0

    ledger = _ledger_by_key(engine, history.users)
    recorded_keys = set()
    for row in rewards:
        recorded_keys.add(row.idempotency_key)
        assert ledger[row.idempotency_key][1] == row.points
        if row.clawed_back_points:
            recorded_keys.add(row.clawback_key)
            assert ledger[row.clawback_key][1] == -row.clawed_back_points
    assert set(ledger) == recorded_keys, "ledger rows without a recorded basis, or the other way round"

    with engine.connect() as conn:
        mismatched = conn.execute(text(
            "SELECT count(*) FROM (SELECT user_id, sum(delta) AS balance, sum(greatest(delta, 0)) AS earned,"
            " sum(least(delta, 0)) AS spent FROM public.user_point_transactions"
            " WHERE user_id = ANY(CAST(:users AS uuid[])) GROUP BY user_id) AS l"
            " LEFT JOIN public.user_point_balances AS b USING (user_id)"
            " WHERE b.user_id IS NULL OR (b.balance, b.total_earned, b.total_spent) <> (l.balance, l.earned, l.spent)"
            " OR l.balance < 0"
        ), {"users": [str(u) for u in history.users]}).scalar_one()
    assert mismatched == 0, "the cache differs from the ledger, or a balance is below zero"


@pytest.mark.slow
@hypothesis_settings(max_examples=50, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(relationships=st.lists(st.tuples(st.sampled_from([1, 1, 1, 2, 0, 3]), st.sampled_from([1, 1, 1, 2]),
                                        st.sampled_from(["REWARDED", "PENDING", "ACTIVE", "REWARDED"])),
                              min_size=USERS, max_size=USERS),
       payments=st.lists(pay_strategy, min_size=10, max_size=30),
       events=st.lists(event_strategy, min_size=10, max_size=35),
       hold_days=st.sampled_from([0, 0, 3]),
       batch_size=st.sampled_from([5000, 2, 1]),
       reward=st.sampled_from([("10%", "5%"), ("150", "7"), ("33.3%", "100%")]))
def test_any_history_ends_exact_after_a_final_run(engine, make_settings, relationships, payments, events,
                                                  hold_days, batch_size, reward):
    _reset(engine)
    settings = make_settings(reward_hold_days=hold_days, batch_size=batch_size, recurring_reward=reward[0],
                             l2_reward=reward[1], points_per_usd=Decimal("100"))
    history = History(engine, settings)

    setup = [("relate", user, *relationship) for user, relationship in enumerate(relationships)]
    for event in [*setup, *payments, *events]:
        history.apply(event)
    history.apply(("run", max(history.latest_as_of, AS_OFS[-2])))

    check_exact(history)
