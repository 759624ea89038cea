"""The liability schedule, the breakage rate and one user's balance with their lots (SPEC "Period close,
journal and liability schedule"; docs/rules.md "Expiry: lots").

Lots are counted as expire-points counts them: each positive ledger row is a lot, a reward's lot less
its own clawback; every other debit (redemptions, negative grants, recoveries, earlier EXPIRY rows)
consumes the oldest lots first. Only rows dated at or before the as-of take part: the schedule and the
balance are the ledger as it stood at that instant, as known now.

The schedule: expire-points at as-of T expires, per user, `due(T - N months)` with
`due(c) = max(0, lots earned before c - consumed)`. A run at the first instant of each month therefore
expires, per user, `due(first instant of month + 1 - N months) - due(first instant of month - N months)`
(`due_now`: what a run at T itself would expire). Since `first instant - N months` is a first instant too,
a lot earned in calendar month m expires in month m + N, whatever its day (the 31st, Feb 29, 00:00:00).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TypedDict
from uuid import UUID

from sqlalchemy import Connection

from core.sql import Queries
from jobs.reconcile_summary import Money, money, usd
from jobs.settings import RuleSettings

_queries = Queries(__file__)

SCHEDULE_MONTHS = 12
BREAKAGE_MONTHS = 12


# ── the JSON shapes (as stored in a reconcile's summary and a period document) ─

class ScheduleMonth(TypedDict):
    month: str
    points: int
    usd: str | None


class LiabilitySchedule(TypedDict, total=False):
    as_of: str
    outstanding_points: int
    due_now_points: int
    months: list[ScheduleMonth]
    later_points: int
    total_points: int
    usd: Money | None


Breakage = TypedDict("Breakage", {"from": str, "to": str, "expired_points": int, "issued_points": int,
                                  "rate": str | None})


class LotData(TypedDict):
    earned_at: str
    type: str
    points: int
    remaining: int
    expires_at: str | None


class ExpiringPoints(TypedDict):
    expires_at: str
    points: int


class UserBalance(TypedDict):
    user_id: str
    as_of: str
    balance: int
    earned: int
    spent: int
    expired: int
    clawed_back: int
    lots: list[LotData]
    expiring_next: ExpiringPoints | None


def schedule_and_breakage(conn: Connection, as_of: datetime, settings: RuleSettings, *,
                          before_as_of: bool = False) -> tuple[LiabilitySchedule, Breakage]:
    """The points outstanding at `as_of` and when they expire if not spent (FINANCE_CONTRACT 4), and the
    breakage of the 12 months before it (FINANCE_CONTRACT 5), from one pass over the ledger: dated at or
    before `as_of`, as reconcile's outstanding; with `before_as_of`, dated before it, as a month's closing
    (the as-of then being the next month's first instant)."""
    months = settings.points_expiry_months
    dated_through = as_of - timedelta(microseconds=1) if before_as_of else as_of
    bounds = conn.execute(_queries["schedule_bounds"], {"as_of": as_of, "months": months, "horizon": SCHEDULE_MONTHS,
                                                        "breakage_months": BREAKAGE_MONTHS}).one()
    window = {"dated_through": dated_through, "as_of": as_of, "breakage_from": bounds.breakage_from}
    per_month = [0] * SCHEDULE_MONTHS
    due_now = 0
    if months == 0:
        found = conn.execute(_queries["outstanding"], window).one()
    else:
        found = conn.execute(_queries["schedule"],
                             {**window, **{f"c{k}": cutoff for k, cutoff in enumerate(bounds.bounds)}}).one()
        due = [int(found._mapping[f"due_{k}"] or 0) for k in range(SCHEDULE_MONTHS + 1)]
        due_now = due[0]
        per_month = [later - earlier for earlier, later in zip(due, due[1:])]
    outstanding = int(found.outstanding)
    # What is neither due nor expiring within the months: also, on a ledger with a negative balance
    # (which reconcile reports), what keeps the identity whole.
    later = outstanding - due_now - sum(per_month)
    price = settings.points_per_usd
    schedule: LiabilitySchedule = {
        "as_of": as_of.isoformat(), "outstanding_points": outstanding, "due_now_points": due_now,
        "months": [{"month": label, "points": points, "usd": usd(points, price) if price else None}
                   for label, points in zip(month_labels(as_of, SCHEDULE_MONTHS), per_month, strict=True)],
        "later_points": later, "total_points": due_now + sum(per_month) + later,
        "usd": money(outstanding, price),
    }
    return schedule, _breakage(bounds.breakage_from, as_of, int(found.expired), int(found.issued))


def liability_schedule(conn: Connection, as_of: datetime, settings: RuleSettings, *,
                       before_as_of: bool = False) -> LiabilitySchedule:
    """The schedule alone (see schedule_and_breakage)."""
    return schedule_and_breakage(conn, as_of, settings, before_as_of=before_as_of)[0]


def breakage(conn: Connection, as_of: datetime, settings: RuleSettings) -> Breakage:
    """Points expired / points issued, rows dated in [as_of - 12 months, as_of) (see schedule_and_breakage)."""
    return schedule_and_breakage(conn, as_of, settings)[1]


def _breakage(from_at: datetime, to: datetime, expired: int, issued: int) -> Breakage:
    rate = (Decimal(expired) / Decimal(issued)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP) if issued else None
    return {"from": from_at.isoformat(), "to": to.isoformat(), "expired_points": expired,
            "issued_points": issued, "rate": None if rate is None else str(rate)}


def month_labels(as_of: datetime, count: int) -> list[str]:
    """`YYYY-MM` of the as-of's calendar month (UTC) and of the months after it."""
    start = as_of.astimezone(timezone.utc)
    return [f"{start.year + (start.month - 1 + k) // 12:04d}-{(start.month - 1 + k) % 12 + 1:02d}"
            for k in range(count)]


def user_balance(conn: Connection, user_id: UUID | str, as_of: datetime,
                 settings: RuleSettings) -> UserBalance | None:
    """One user's ledger balance at `as_of`, their lots and when each expires (FINANCE_CONTRACT 7);
    None when the user has no ledger row at all."""
    totals = conn.execute(_queries["user_totals"], {"user_id": user_id, "as_of": as_of}).one()
    if not totals.rows_ever:
        return None
    lots = user_lots(conn, user_id, as_of, settings.points_expiry_months)
    expiring = expiring_next(lots, limit=1)
    return {
        "user_id": str(user_id), "as_of": as_of.isoformat(), "balance": int(totals.balance),
        "earned": int(totals.earned), "spent": int(totals.spent), "expired": int(totals.expired),
        "clawed_back": int(totals.clawed_back),
        "lots": [{"earned_at": lot.earned_at.isoformat(), "type": lot.type, "points": lot.points,
                  "remaining": lot.remaining,
                  "expires_at": None if lot.expires_at is None else lot.expires_at.isoformat()} for lot in lots],
        "expiring_next": ({"expires_at": expiring[0].expires_at.isoformat(), "points": expiring[0].points}
                          if expiring else None),
    }


@dataclass(frozen=True)
class Lot:
    earned_at: datetime
    type: str
    points: int            # the row's delta
    size: int              # less the reward's own clawback
    remaining: int         # what the consuming debits left of it
    expires_at: datetime | None


@dataclass(frozen=True)
class Expiring:
    expires_at: datetime
    points: int


def user_lots(conn: Connection, user_id: UUID | str, as_of: datetime, months: int) -> list[Lot]:
    """One user's lots at `as_of`, oldest first (the one derivation `balance` and `explain` read)."""
    return [Lot(earned_at=row.earned_at, type=row.type, points=int(row.points), size=int(row.size),
                remaining=int(row.remaining), expires_at=row.expires_at)
            for row in conn.execute(_queries["user_lots"], {"user_id": user_id, "as_of": as_of, "months": months})]


def expiring_next(lots: list[Lot], *, limit: int) -> list[Expiring]:
    """The points still in the lots by expiry instant, the first `limit` instants (the ones already
    past are expired by the next expire-points run)."""
    by_instant: dict[datetime, int] = {}
    for lot in lots:
        if lot.remaining > 0 and lot.expires_at is not None:
            by_instant[lot.expires_at] = by_instant.get(lot.expires_at, 0) + lot.remaining
    return [Expiring(expires_at, points) for expires_at, points in sorted(by_instant.items())[:limit]]
