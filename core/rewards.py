"""What recurring-rewards and level2-rewards share: month windows, basis payments, amounts, the scan.

Month k of a relationship r is `[r.rewarded_at + k months, r.rewarded_at + (k+1) months)` in
PostgreSQL month arithmetic in UTC (Jan 31 + 1 month = Feb 28/29). A month is paid when the referred
user has a `PAID` payment with `paid_at` in it and `paid_at <= as_of`; its basis payment is the
earliest such payment (by `paid_at`, then `id`). A reward is whole points, or for a percentage
`floor(amount_cents * pct/100 * REWARDS_POINTS_PER_USD/100)` in exact decimal arithmetic. A reward
of 0 points is not written; nor is one too large for the ledger's INT column (a payment of more
than $21 million at 100 % and 100 points per dollar), so one absurd payment never fails every run.

Every reward is one ledger row keyed `{prefix}:{relationship id}:{k}`, written through the ledger
writer, so reruns, runs for several as-of dates in any order and concurrent runs write it once.

The scan restriction. A month is complete (every payment in it seen) in the first successful run
whose as-of is at or after the month's end. Let H be the latest as-of of this job's successful real
runs made with the same months setting and payments table, and
`scan_floor = least(H, as_of) - LATE_PAYMENT_MARGIN_DAYS`. A run checks only the months that end
after scan_floor (and have started by as_of), so only the relationships whose last month ends
after it. By induction on the runs, every month that ended by H was completed by an earlier run,
and a run for an as-of below H could only write what that run already wrote; with no such run
yet, everything is checked. The relationships are found on an index by
`rewarded_at > F - m months` (F = scan_floor, m = the end of the last month, in months), which
keeps every relationship whose last month ends after F: `t <= F - m months` implies
`t + m months <= F`, because `F - m months` has F's time of day and a day of month no later than
F's, so adding m months to any instant up to it lands no later than F.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from core.job import Batch, RunContext
from core.ledger import write_points
from core.settings import RewardAmount
from core.sql import Queries

_queries = Queries(__file__)

# Billing may record a payment some days after its paid_at (webhook retries, manual fixes). A
# payment recorded less than this long after its reward month ended is still rewarded by the next
# run; one recorded later is not seen by the restricted scan (see the README).
LATE_PAYMENT_MARGIN_DAYS = 7

LEDGER_INT_MAX = 2**31 - 1
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
    months_variable: str
    points_per_usd: Decimal

    @property
    def span_months(self) -> int:
        """Months from rewarded_at to the end of the last reward month."""
        return self.last_month + 1

    @property
    def months_setting(self) -> int:
        """The value of the job's months variable (REWARDS_RECURRING_MONTHS or REWARDS_L2_MONTHS)."""
        return self.last_month - self.first_month + 1

    @property
    def has_months(self) -> bool:
        return self.last_month >= self.first_month

    def amount_params(self) -> dict[str, Any]:
        """Whole points as `fixed_points` (percent 0), a percentage as `percent` (fixed 0)."""
        if self.amount.points is not None:
            return {"fixed_points": self.amount.points, "percent": Decimal(0),
                    "points_per_usd": self.points_per_usd}
        return {"fixed_points": 0, "percent": self.amount.percent, "points_per_usd": self.points_per_usd}

    def params(self, as_of: datetime) -> dict[str, Any]:
        return {"as_of": as_of, "first_month": self.first_month, "last_month": self.last_month,
                "ledger_type": self.ledger_type, "key_prefix": self.key_prefix, "note_label": self.note_label,
                **self.amount_params()}


@dataclass(frozen=True)
class RewardQueries:
    """A job's own statements: which relationships it scans and who benefits.

    `count_to_scan` and `count_missing_rewarded_at` return one number; `select_batch` returns one
    row (`last_rewarded_at`, `last_id`, `relationships_scanned`, and counters named for the stats);
    `relationships` is a SELECT of (id, referred_user_id, rewarded_at, beneficiary_user_id) over
    the batch's keys, after (after_rewarded_at, after_id) up to (last_rewarded_at, last_id).
    """

    count_to_scan: Any
    count_missing_rewarded_at: Any
    select_batch: Any
    relationships: str


_BATCH_BOOKKEEPING = {"last_rewarded_at", "last_id"}


def check_amount_fits(rule: RewardRule) -> None:
    if rule.amount.points is not None and rule.amount.points > LEDGER_INT_MAX:
        raise ValueError(f"{rule.amount_variable}: {rule.amount.points} points do not fit the ledger "
                         f"(at most {LEDGER_INT_MAX})")


@dataclass(frozen=True)
class ScanBounds:
    """Where a run looks: months ending after `scan_floor`, relationships rewarded after `scan_from`
    (both None: everything). `high_water` is the latest as-of of the job's successful real runs."""

    high_water: datetime | None
    scan_floor: datetime | None
    scan_from: datetime | None


def scan_bounds(conn: Connection, rule: RewardRule, as_of: datetime, payments_table: str) -> ScanBounds:
    """Read from job_runs: the settings compared are those `Job.rule_settings` recorded."""
    row = conn.execute(_queries["scan_bounds"], {
        "job": rule.job, "as_of": as_of, "margin_days": LATE_PAYMENT_MARGIN_DAYS,
        "span_months": rule.span_months, "months_variable": rule.months_variable,
        "months": str(rule.months_setting), "payments_table": payments_table,
    }).one()
    return ScanBounds(row.high_water, row.scan_floor, row.scan_from)


def candidates_sql(relationships_sql: str, payments_table_sql: str) -> str:
    """The candidates SELECT for the ledger writer, over the given relationships."""
    return _queries.raw("reward_candidates").format(relationships=relationships_sql, payments=payments_table_sql)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class _RewardScan:
    """One run's scan: its bounds, its statements, and the batch step for `ctx.batches`."""

    ctx: RunContext
    rule: RewardRule
    queries: RewardQueries
    bounds: ScanBounds

    def __post_init__(self) -> None:
        payments = self.ctx.settings.payments_table_sql
        self.write_sql = candidates_sql(self.queries.relationships, payments)
        self.params = {**self.rule.params(self.ctx.as_of), "scan_floor": self.bounds.scan_floor}

    def batch(self, conn: Connection, after: Any) -> Batch:
        """The next batch after `after` (rewarded_at, id): count it, then write its rewards."""
        after_rewarded_at, after_id = after or (self.bounds.scan_from, _LAST_UUID)
        row = conn.execute(self.queries.select_batch, {
            "as_of": self.ctx.as_of, "after_rewarded_at": after_rewarded_at, "after_id": after_id,
            "batch_size": self.ctx.settings.batch_size,
        }).one()
        for key, value in row._mapping.items():
            if key not in _BATCH_BOOKKEEPING:
                self.ctx.count(key, value)
        if row.relationships_scanned == 0:
            return Batch(next_after=None)
        params = {**self.params, "after_rewarded_at": after_rewarded_at, "after_id": after_id,
                  "last_rewarded_at": row.last_rewarded_at, "last_id": row.last_id}
        self.ctx.record_points(write_points(conn, self.write_sql, params, as_of=self.ctx.as_of,
                                            dry_run=self.ctx.dry_run))
        full = row.relationships_scanned == self.ctx.settings.batch_size
        return Batch(next_after=(row.last_rewarded_at, row.last_id) if full else None,
                     items=row.relationships_scanned)


def run_reward_job(ctx: RunContext, rule: RewardRule, queries: RewardQueries) -> None:
    """Scan the relationships still inside their reward months in keyset batches of
    (rewarded_at, id); each batch writes its rewards with one candidates SELECT."""
    check_amount_fits(rule)
    ctx.stats.update(relationships_scanned=0, skipped_missing_rewarded_at=0)
    if not rule.has_months:
        ctx.stats["scan"] = "none: no reward months configured"
        ctx.log.info("no reward months configured", action="rewards_no_months")
        return
    with ctx.engine.connect() as conn:
        bounds = scan_bounds(conn, rule, ctx.as_of, ctx.settings.payments_table)
        total = conn.execute(queries.count_to_scan, {"as_of": ctx.as_of, "scan_from": bounds.scan_from}).scalar_one()
        ctx.count("skipped_missing_rewarded_at", conn.execute(queries.count_missing_rewarded_at).scalar_one())
    ctx.stats.update(high_water_as_of=_iso(bounds.high_water) or "none",
                     scan_floor=_iso(bounds.scan_floor) or "none", scan_from=_iso(bounds.scan_from) or "all")
    ctx.batches(_RewardScan(ctx, rule, queries, bounds).batch, total=total)
