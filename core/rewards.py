"""What recurring-rewards and level2-rewards share: month windows, basis payments, amounts, the scan.

Month k of a relationship r is `[r.rewarded_at + k months, r.rewarded_at + (k+1) months)` in
PostgreSQL month arithmetic in UTC (Jan 31 + 1 month = Feb 28/29). A month is paid when the referred
user has a `PAID` payment with `paid_at` in it and `paid_at <= as_of`; its basis payment is the
earliest such payment (by `paid_at`, then `id`). A reward is whole points, or for a percentage
`floor(amount_cents * pct/100 * REWARDS_POINTS_PER_USD/100)` in exact decimal arithmetic. A reward
of 0 points is not written; one too large for the ledger's INT column is not written either, and
the payments that would give it are counted in the run's stats (`payments_too_large_to_reward`).

Every reward is one ledger row keyed `{prefix}:{relationship id}:{k}`, written through the ledger
writer, so reruns, runs for several as-of dates in any order and concurrent runs write it once.

The scan restriction: the daily run looks only at relationships whose reward months can still
bring something new. With H the latest as-of of this job's successful real runs and
`L = least(H, as_of) - LATE_PAYMENT_MARGIN`, a relationship is scanned when its last month ends
after L, i.e. `rewarded_at + span months > L` (span = the end of its last month, in months). Every
month is complete (all its payments seen) in the first successful run whose as-of is at or after
the month's end, so by induction a relationship whose last month ended before H was completed by
an earlier run, and any run at an as-of below H could only write what that run wrote already. With
no successful run yet, everything is scanned. SQL bounds it as `rewarded_at > L - span months`,
which keeps every relationship the exact rule keeps: `t <= L - m months` implies
`t + m months <= (L - m months) + m months <= L`, because month arithmetic only clamps days down.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from core.job import Batch, RunContext
from core.ledger import write_points
from core.settings import RewardAmount
from core.sql import Queries

_queries = Queries(__file__)

# Billing may record a payment some days after its paid_at (webhook retries, manual fixes). Such a
# payment is still rewarded when it arrives within this margin after its reward month closed and
# that month's first successful run; a later one needs a full scan (see the README).
LATE_PAYMENT_MARGIN_DAYS = 7

LEDGER_INT_MAX = 2**31 - 1
_BIGINT_MAX = 2**63 - 1
_LAST_UUID = str(UUID(int=2**128 - 1))


@dataclass(frozen=True)
class RewardRule:
    """One job's reward rule: which months, how much, and how its ledger rows look."""

    job: str
    ledger_type: str
    key_prefix: str
    note_label: str
    first_month: int
    last_month: int
    amount: RewardAmount
    amount_variable: str
    points_per_usd: Decimal

    @property
    def span_months(self) -> int:
        """Months from rewarded_at to the end of the last reward month."""
        return self.last_month + 1

    @property
    def has_months(self) -> bool:
        return self.last_month >= self.first_month

    def amount_params(self) -> dict[str, Any]:
        """Whole points as `fixed_points` (percent 0), a percentage as `percent` (fixed 0)."""
        if self.amount.points is not None:
            return {"fixed_points": self.amount.points, "percent": Decimal(0),
                    "points_per_usd": self.points_per_usd}
        return {"fixed_points": 0, "percent": self.amount.percent, "points_per_usd": self.points_per_usd}

    def min_too_large_cents(self) -> int | None:
        """The smallest payment whose percentage reward exceeds the ledger's INT, None if none can."""
        if self.amount.percent is None:
            return None
        rate = self.amount.percent * self.points_per_usd
        if rate <= 0:
            return None
        cents = math.ceil(Decimal(LEDGER_INT_MAX + 1) * 10000 / rate)
        return cents if cents <= _BIGINT_MAX else None

    def params(self, as_of: datetime) -> dict[str, Any]:
        return {"as_of": as_of, "first_month": self.first_month, "last_month": self.last_month,
                "ledger_type": self.ledger_type, "key_prefix": self.key_prefix, "note_label": self.note_label,
                "min_too_large_cents": self.min_too_large_cents(), **self.amount_params()}


@dataclass(frozen=True)
class RewardQueries:
    """A job's own statements: which relationships it scans and who benefits.

    `count_to_scan` and `count_missing_rewarded_at` return one number; `select_batch` returns one
    row (`ids`, `last_rewarded_at`, `last_id`, `relationships_scanned`, and counters named for the
    stats); `relationships` is a SELECT of (id, referred_user_id, rewarded_at, beneficiary_user_id)
    over `id = ANY(CAST(:ids AS uuid[]))` that re-checks the job's conditions.
    """

    count_to_scan: Any
    count_missing_rewarded_at: Any
    select_batch: Any
    relationships: str


_BATCH_BOOKKEEPING = {"ids", "last_rewarded_at", "last_id"}


def check_amount_fits(rule: RewardRule) -> None:
    if rule.amount.points is not None and rule.amount.points > LEDGER_INT_MAX:
        raise ValueError(f"{rule.amount_variable}: {rule.amount.points} points do not fit the ledger "
                         f"(at most {LEDGER_INT_MAX})")


def scan_bounds(conn: Connection, rule: RewardRule, as_of: datetime) -> tuple[datetime | None, datetime | None]:
    """(high-water as-of, scan_from): scan relationships with rewarded_at > scan_from (None: all)."""
    row = conn.execute(_queries["scan_from"], {
        "job": rule.job, "as_of": as_of, "margin_days": LATE_PAYMENT_MARGIN_DAYS,
        "span_months": rule.span_months,
    }).one()
    return row.high_water, row.scan_from


def candidates_sql(relationships_sql: str, payments_table_sql: str) -> str:
    """The candidates SELECT for the ledger writer, over the given relationships."""
    return _queries.raw("reward_candidates").format(relationships=relationships_sql, payments=payments_table_sql)


def run_reward_job(ctx: RunContext, rule: RewardRule, queries: RewardQueries) -> None:
    """Scan the relationships still inside their reward months in keyset batches of
    (rewarded_at, id); each batch writes its rewards with one candidates SELECT."""
    check_amount_fits(rule)
    ctx.stats.update(relationships_scanned=0, skipped_missing_rewarded_at=0, payments_too_large_to_reward=0)
    if not rule.has_months:
        ctx.stats["scan"] = "nothing to do: no reward months configured"
        ctx.log.info("no reward months configured", action="rewards_no_months")
        return
    params = rule.params(ctx.as_of)
    with ctx.engine.connect() as conn:
        high_water, scan_from = scan_bounds(conn, rule, ctx.as_of)
        scope = {"as_of": ctx.as_of, "scan_from": scan_from}
        total = conn.execute(queries.count_to_scan, scope).scalar_one()
        ctx.count("skipped_missing_rewarded_at", conn.execute(queries.count_missing_rewarded_at).scalar_one())
    ctx.stats["scan_from"] = scan_from.isoformat() if scan_from else "all"
    ctx.stats["high_water_as_of"] = high_water.isoformat() if high_water else None
    payments = ctx.settings.payments_table_sql
    write_sql = candidates_sql(queries.relationships, payments)
    too_large_sql = _queries.raw("count_too_large_payments").format(
        relationships=queries.relationships, payments=payments)

    def reward_batch(conn: Connection, after: Any) -> Batch:
        after_rewarded_at, after_id = after or (scan_from, _LAST_UUID)
        row = conn.execute(queries.select_batch, {
            **scope, "after_rewarded_at": after_rewarded_at, "after_id": after_id,
            "batch_size": ctx.settings.batch_size,
        }).one()
        for key, value in row._mapping.items():
            if key not in _BATCH_BOOKKEEPING:
                ctx.count(key, value)
        if row.relationships_scanned == 0:
            return Batch(next_after=None)
        batch_params = {**params, "ids": row.ids}
        ctx.record_points(write_points(conn, write_sql, batch_params, as_of=ctx.as_of, dry_run=ctx.dry_run))
        if params["min_too_large_cents"] is not None:
            ctx.count("payments_too_large_to_reward", conn.execute(
                text(too_large_sql), batch_params).scalar_one())
        full = row.relationships_scanned == ctx.settings.batch_size
        return Batch(next_after=(row.last_rewarded_at, row.last_id) if full else None,
                     items=row.relationships_scanned)

    ctx.batches(reward_batch, total=total)
