"""`explain USER_ID`: a user's referral chain, the state of every reward month, their ledger rows
with the run that wrote each, the outstanding unrecovered points and the points expiring next, as the
world stood at an as-of instant.

Read-only. The month states come from the reward jobs' own derivation (`jobs.rewards.month_facts`,
the statement their plan reads), run for this user's referred users at the as-of, so support and the
jobs cannot disagree. A month is, at the as-of instant:
- `to be written`: it is paid and no reward stands: the next run of its job writes it;
- `to be clawed back`: its reward's basis no longer holds: the next run takes it back;
- `paid`: a reward stands for it (to this user, or to the beneficiary it was written for);
- `nothing to pay`: it is paid, but the reward setting gives 0 points;
- `on hold`: its PAID payments are younger than REWARDS_REWARD_HOLD_DAYS;
- `clawed back`: its reward was taken back and nothing is owed now (taken, expired, unrecovered,
  recovered);
- `unpaid`: no PAID payment in it at the as-of;
- `not yet`: it starts after the as-of instant.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Unpack
from uuid import UUID

from sqlalchemy import Connection, Engine, Row

from core.clock import when
from core.sql import Queries
from jobs import level2_rewards, recurring_rewards
from jobs.liability import Expiring, expiring_next, user_lots
from jobs.rewards import feed_sql, month_facts
from jobs.settings import RuleSettings

_queries = Queries(__file__)
SqlRow = Row[Unpack[tuple[object, ...]]]  # a row of a query in the .sql file: its columns named by the SQL
LEDGER_ROWS_SHOWN = 30
EXPIRIES_SHOWN = 5
RULES = {1: recurring_rewards.rule_for, 2: level2_rewards.rule_for}
# A reward month: (referred user, level, month number).
MonthKey = tuple[UUID, int, int]
# When a month has several facts, the one a person needs first.
_PRECEDENCE = ("to be clawed back", "to be written", "paid", "nothing to pay", "on hold")


@dataclass
class MonthState:
    relationship_id: UUID
    referred_user_id: UUID
    reward_level: int
    month: int
    starts_at: datetime | None
    ends_at: datetime | None
    state: str
    points: int | None
    why: str
    key: str | None = None


@dataclass
class LedgerRow:
    """One of the user's ledger rows (`ledger_rows`), with the run that wrote it: `run_id` and `job` are
    None for the app's rows, and for a job's row whose run is not found."""

    created_at: datetime
    type: str
    delta: int
    idempotency_key: str | None
    ref_id: UUID | None
    note: str | None
    run_id: int | None
    job: str | None


@dataclass
class Explanation:
    user_id: UUID
    as_of: datetime
    balance: SqlRow
    referrer: SqlRow | None
    referrals: list[SqlRow]
    months: list[MonthState] = field(default_factory=list)
    to_write: list[SqlRow] = field(default_factory=list)  # the rows the next runs write for this user
    ledger: list[LedgerRow] = field(default_factory=list)
    outstanding: dict[int, int] = field(default_factory=dict)  # unrecovered points owed back, by level
    expiring: list[Expiring] = field(default_factory=list)
    expiry_months: int = 0

    @property
    def exists(self) -> bool:
        return bool(self.balance.ledger_rows or self.balance.cached_balance is not None
                    or self.balance.in_referrals or self.months)


def money(cents: int) -> str:
    return f"${cents / 100:,.2f}"


def explain(engine: Engine, settings: RuleSettings, user_id: UUID, as_of: datetime) -> Explanation:
    params: dict[str, object] = {"user_id": user_id, "as_of": as_of}
    with engine.connect() as conn:
        found = Explanation(
            user_id=user_id, as_of=as_of,
            balance=conn.execute(_queries["user_balance"], params).one(),
            referrer=conn.execute(_queries["referrer"], params).one_or_none(),
            referrals=list(conn.execute(_queries["referrals"], params)),
            ledger=_ledger_rows(conn, params),
            outstanding={row.level: int(row.points) for row in conn.execute(_queries["outstanding"], params)},
            expiry_months=settings.points_expiry_months,
        )
        if settings.points_expiry_months:
            # The lots as `balance` reads them (jobs/liability.sql user_lots): one derivation for both.
            lots = user_lots(conn, user_id, as_of, settings.points_expiry_months)
            found.expiring = expiring_next(lots, limit=EXPIRIES_SHOWN)
        _reward_months(conn, settings, found)
    return found


_RECOVERY_LEVEL = re.compile(r"^recover:.*\+00:00:([12])(?::\d+)?$")  # recover:{user}:{as_of UTC}:{level}[:n]


def _job_of(key: str | None) -> str | None:
    """The job whose run wrote a row of this key, for the rows referral_rewards does not record."""
    if key is None:
        return None
    if key.startswith("expiry:"):
        return "expire-points"
    recovery = _RECOVERY_LEVEL.match(key)
    if recovery:
        return "recurring-rewards" if recovery[1] == "1" else "level2-rewards"
    return None


def _ledger_rows(conn: Connection, params: dict[str, object]) -> list[LedgerRow]:
    """The newest ledger rows at the as-of, each with `run_id` and `job`: the run that wrote it."""
    rows = [LedgerRow(**row._asdict())
            for row in conn.execute(_queries["ledger_rows"], {**params, "limit": LEDGER_ROWS_SHOWN})]
    wanted = [row for row in rows if row.run_id is None and _job_of(row.idempotency_key)]
    if wanted:
        first = {(run.job, run.as_of): run.id for run in conn.execute(
            _queries["first_runs"], {"instants": sorted({row.created_at for row in wanted})})}
        for row in wanted:
            job = _job_of(row.idempotency_key)
            row.run_id = first.get((job, row.created_at))
            row.job = job if row.run_id is not None else None
    return rows


def _facts(conn: Connection, settings: RuleSettings, level: int, as_of: datetime,
           referred: list[UUID]) -> list[SqlRow]:
    """The jobs' derivation at `as_of` for these referred users, with every month state (:explain)."""
    rule = RULES[level](settings)
    if not referred or rule.last_month < rule.first_month:
        return []
    params = {**rule.params(as_of), "explain": True, "seen_until": as_of,
              "only_referred": [str(user) for user in referred]}
    return list(conn.execute(month_facts(feed_sql(conn, settings)), params))


def _reward_months(conn: Connection, settings: RuleSettings, found: Explanation) -> None:
    referred = sorted({r.referred_user_id for r in found.referrals}
                      | {row.referred_user_id for row in conn.execute(_queries["rewarded_referred_users"],
                                                                       {"user_id": found.user_id})
                         if row.referred_user_id is not None}, key=str)
    records: dict[MonthKey, list[SqlRow]] = {}
    for record in conn.execute(_queries["recorded_rewards"], {"user_id": found.user_id, "as_of": found.as_of}):
        records.setdefault((record.referred_user_id, record.level, record.month), []).append(record)
    facts: dict[MonthKey, list[SqlRow]] = {}
    for level in (1, 2):
        for fact in _facts(conn, settings, level, found.as_of, referred):
            facts.setdefault((fact.referred_user_id, level, fact.month), []).append(fact)
            if fact.action is not None and fact.user_id == found.user_id:
                found.to_write.append(fact)
    shown: set[MonthKey] = set()
    for relationship in found.referrals:
        rule = RULES[relationship.reward_level](settings)
        windows: Iterable[SqlRow] = [] if relationship.rewarded_at is None else conn.execute(
            _queries["reward_months"], {"rewarded_at": relationship.rewarded_at, "first_month": rule.first_month,
                                        "last_month": rule.last_month})
        for window in windows:
            month = (relationship.referred_user_id, relationship.reward_level, window.month)
            shown.add(month)
            found.months.append(_month_state(found, relationship.id, month, window, facts.get(month, []),
                                             records.get(month, [])))
    # Months this user holds rewards of, outside their current chain (a parent or referrer changed since).
    for month in sorted(set(records) - shown, key=lambda m: (str(m[0]), m[1], m[2])):
        relationship_id = records[month][-1].relationship_id
        found.months.append(_month_state(found, relationship_id, month, None, facts.get(month, []), records[month]))


def _month_state(found: Explanation, relationship_id: UUID, month: MonthKey, window: SqlRow | None,
                 facts: list[SqlRow], records: list[SqlRow]) -> MonthState:
    referred_user_id, level, k = month

    def state(name: str, why: str, points: int | None = None, key: str | None = None) -> MonthState:
        return MonthState(relationship_id, referred_user_id, level, k, window.starts_at if window else None,
                          window.ends_at if window else None, name, points, why, key)

    for name in _PRECEDENCE:
        fact = next((f for f in facts if f.state == name), None)
        if fact is not None:
            return state(name, _why(found, fact), _points(fact), fact.idempotency_key)
    clawed = [r for r in records if r.clawback_key is not None]
    if clawed:
        last = clawed[-1]
        return state("clawed back", f"{last.clawed_back_points:,} taken back {when(last.clawed_back_at, seconds=False)}"
                                    f", {last.expired_points:,} already expired, {last.unrecovered_points:,} unrecovered"
                                    f" ({last.recovered_points:,} recovered since)", -int(last.points),
                     last.clawback_key)
    if window is not None and window.starts_at > found.as_of:
        return state("not yet", f"the month starts {when(window.starts_at, seconds=False)}")
    return state("unpaid", "no PAID payment in the month at the as-of")


def _points(fact: SqlRow) -> int | None:
    if fact.state == "to be clawed back":
        return -int(fact.points)
    return None if fact.points is None else int(fact.points)


def _why(found: Explanation, fact: SqlRow) -> str:
    basis = (f"basis {money(fact.basis_amount_cents)} payment {fact.payment_id}"
             if fact.basis_amount_cents is not None else f"basis payment {fact.payment_id}")
    if fact.state == "to be written":
        return f"{basis} paid {when(fact.basis_paid_at, seconds=False)}: the next run writes {fact.idempotency_key}"
    if fact.state == "to be clawed back":
        return f"{fact.note.split(': ', 1)[-1]}: the next run writes {fact.idempotency_key}"
    if fact.state == "paid":
        to = "" if fact.user_id == found.user_id else f" to {fact.user_id}, the beneficiary when it was written"
        later = f"; {fact.note}" if fact.note else ""
        return f"{basis}; written {when(fact.written_at, seconds=False)}{to}{later}"
    if fact.state == "on hold":
        return f"{money(fact.basis_amount_cents)} paid {when(fact.basis_paid_at, seconds=False)}; {fact.note}"
    return f"{basis}: {fact.note}"
