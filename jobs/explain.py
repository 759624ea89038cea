"""`explain USER_ID`: a user's referral chain, the state of every reward month, their ledger rows
with the run that wrote each, and the points expiring next, at an as-of instant.

Read-only. It restates the rules of SPEC.md ("Time", the reward jobs, holds and clawbacks,
expire-points) for one user, so support can answer "where are my points?" without reading SQL.
A month is, at the as-of instant:
- `paid`: a reward stands for it (its basis payment is still PAID);
- `clawed back`: its reward's basis payment stopped being PAID and the reward was taken back;
- `on hold`: a PAID payment is in it, but paid less than REWARDS_REWARD_HOLD_DAYS ago;
- `due`: it qualifies and no reward is written yet: the job's next run writes it;
- `unpaid`: no PAID payment in it (refunded, failed, none, or paid after the as-of);
- `not yet`: it starts after the as-of instant.
The reward basis records (`referral_rewards`, migration 016) are read when that table exists;
without it, paid months are found by their ledger keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine

from core.clock import when
from core.sql import Queries
from jobs.settings import RuleSettings

_queries = Queries(__file__)
LEDGER_ROWS_SHOWN = 30
EXPIRIES_SHOWN = 5
REWARD_JOBS = {1: ("recurring", "recurring-rewards"), 2: ("l2", "level2-rewards")}


@dataclass
class MonthState:
    relationship_id: UUID
    reward_level: int
    month: int
    starts_at: datetime
    ends_at: datetime
    state: str
    points: int | None
    why: str


@dataclass
class Explanation:
    user_id: UUID
    as_of: datetime
    balance: Any
    referrer: Any | None
    referrals: list[Any]
    months: list[MonthState] = field(default_factory=list)
    ledger: list[Any] = field(default_factory=list)
    expiring: list[Any] = field(default_factory=list)
    reward_records: bool = False
    expiry_months: int = 0


def money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def explain(engine: Engine, settings: RuleSettings, user_id: UUID, as_of: datetime) -> Explanation:
    with engine.connect() as conn:
        found = Explanation(
            user_id=user_id, as_of=as_of,
            balance=conn.execute(_queries["user_balance"], {"user_id": user_id}).one(),
            referrer=conn.execute(_queries["referrer"], {"user_id": user_id}).one_or_none(),
            referrals=list(conn.execute(_queries["referrals"], {"user_id": user_id})),
            ledger=list(conn.execute(_queries["ledger_rows"], {"user_id": user_id, "limit": LEDGER_ROWS_SHOWN})),
            reward_records=bool(conn.execute(_queries["has_reward_records"]).scalar()),
            expiry_months=settings.points_expiry_months,
        )
        if settings.points_expiry_months:
            found.expiring = list(conn.execute(_queries["expiring_next"], {
                "user_id": user_id, "months": settings.points_expiry_months, "limit": EXPIRIES_SHOWN}))
        found.months = _reward_months(conn, settings, found)
    return found


def _reward_months(conn: Connection, settings: RuleSettings, found: Explanation) -> list[MonthState]:
    rewarded = [r for r in found.referrals if r.status == "REWARDED" and r.rewarded_at is not None]
    if not rewarded:
        return []
    payments: dict[UUID, list[Any]] = {}
    for payment in conn.execute(_queries.render("payments", payments=settings.payments_table_sql),
                                {"user_ids": [r.referred_user_id for r in rewarded]}):
        payments.setdefault(payment.user_id, []).append(payment)
    records: dict[tuple[UUID, int, int], list[Any]] = {}
    if found.reward_records:
        for record in conn.execute(_queries["recorded_rewards"], {"user_id": found.user_id}):
            records.setdefault((record.relationship_id, record.level, record.month), []).append(record)
    keys = {row.idempotency_key: row for row in conn.execute(_queries["reward_keys"], {"user_id": found.user_id})}
    hold = timedelta(days=getattr(settings, "reward_hold_days", 0))
    states = []
    for relationship in rewarded:
        first, last = ((1, settings.recurring_months) if relationship.reward_level == 1
                       else (0, settings.l2_months - 1))
        windows = conn.execute(_queries["reward_months"], {
            "relationship_id": relationship.id, "rewarded_at": relationship.rewarded_at,
            "first_month": first, "last_month": last})
        for window in windows:
            month_payments = [p for p in payments.get(relationship.referred_user_id, [])
                              if window.starts_at <= p.paid_at < window.ends_at]
            states.append(_month_state(relationship, window, month_payments,
                                       records.get((relationship.id, relationship.reward_level, window.month), []),
                                       keys, found.as_of, hold))
    return states


def _month_state(relationship: Any, window: Any, month_payments: list[Any], records: list[Any],
                 keys: dict[str, Any], as_of: datetime, hold: timedelta) -> MonthState:
    prefix, job = REWARD_JOBS[relationship.reward_level]

    def state(name: str, why: str, points: int | None = None) -> MonthState:
        return MonthState(relationship.id, relationship.reward_level, window.month, window.starts_at,
                          window.ends_at, name, points, why)

    if window.starts_at > as_of:
        return state("not yet", f"the month starts {when(window.starts_at, seconds=False)}")
    by_id = {p.id: p for p in month_payments}
    standing = [r for r in records if r.clawback_key is None]
    clawed = [r for r in records if r.clawback_key is not None]
    if standing:
        reward = standing[-1]
        basis = by_id.get(reward.payment_id)
        paid = f"{money(basis.amount_cents)} paid {when(basis.paid_at, seconds=False)}" if basis else "payment"
        return state("paid", f"basis {paid} ({reward.payment_id}); written {when(reward.rewarded_at, seconds=False)}",
                     reward.points)
    key = f"{prefix}:{relationship.id}:{window.month}"
    paid = [p for p in month_payments if p.status == "PAID" and p.paid_at <= as_of]
    if not records and key in keys and f"clawback:{key}" not in keys:
        basis = f"basis {money(paid[0].amount_cents)} paid {when(paid[0].paid_at, seconds=False)}; " if paid else ""
        return state("paid", f"{basis}written {when(keys[key].created_at, seconds=False)}", keys[key].delta)
    qualifying = [p for p in paid if p.paid_at <= as_of - hold]
    if clawed:
        last = clawed[-1]
        basis = by_id.get(last.payment_id)
        now = basis.status if basis else "gone from the feed"
        why = (f"basis payment {last.payment_id} is {now}; {last.clawed_back_points:,} points taken back"
               f" {when(last.clawed_back_at, seconds=False)}, {last.unrecovered_points:,} unrecovered")
        if qualifying:
            why += f"; earns again at the next {job} run (payment {qualifying[0].id})"
        return state("clawed back", why, -last.points)
    if qualifying:
        first = qualifying[0]
        return state("due", f"{money(first.amount_cents)} paid {when(first.paid_at, seconds=False)}: "
                            f"the next {job} run writes it")
    if paid:
        first = paid[0]
        return state("on hold", f"{money(first.amount_cents)} paid {when(first.paid_at, seconds=False)}; counts from "
                                f"{when(first.paid_at + hold, seconds=False)} (REWARDS_REWARD_HOLD_DAYS={hold.days})")
    return state("unpaid", _why_unpaid(month_payments, as_of))


def _why_unpaid(month_payments: list[Any], as_of: datetime) -> str:
    if not month_payments:
        return "no payment in the month"
    notes = [f"{money(p.amount_cents)} {p.status if p.paid_at <= as_of else 'paid after the as-of'}"
             f" {when(p.paid_at, seconds=False)}" for p in month_payments]
    return "no PAID payment: " + ", ".join(notes)
