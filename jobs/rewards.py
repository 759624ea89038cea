"""What recurring-rewards and level2-rewards share: one rule, one statement per step (rewards.sql).

Each run derives from the data as it is now (relationships, payments, the rewards already written,
settings, as-of) what every month owes, and writes the difference; nothing is remembered between runs,
so a payment recorded late, a FAILED payment turned PAID, a relationship or parent that changed late,
or a re-run of a past date is rewarded by the next run.

- **Months.** Month k of relationship r is `[r.rewarded_at + k months, r.rewarded_at + (k+1) months)`
  in UTC (Jan 31 + 1 month = Feb 28/29). A month is *paid* when the referred user has a `PAID`
  payment in it with `paid_at <= as_of - REWARDS_REWARD_HOLD_DAYS days`; its basis payment is the
  earliest one (by paid_at, then id). A reward is whole points, or
  `floor(amount_cents × pct/100 × REWARDS_POINTS_PER_USD/100)` exactly; 0 points is not written.
- **Refunds.** When a reward's basis payment is no longer `PAID` (refunded, failed, or gone from the
  feed), the job writes a `REFERRAL_CLAWBACK` row for the beneficiary, key `clawback:{reward key}`,
  taking `min(reward, balance)`; the rest is *unrecovered* (recorded in `referral_rewards` and the
  run's stats). Only a basis that stops being PAID claws back: a later change of settings, statuses
  or parents never takes back a reward already written.
- **Re-earning.** A month whose reward was clawed back earns again from its earliest qualifying PAID
  payment, key `{first key}:{payment id}` (`:{n}` appended when that payment earned the month before).
  A standing reward keeps its basis and amount while its payment stays PAID.
- **Hold.** With `REWARDS_REWARD_HOLD_DAYS` = d, a payment counts only once it is d days old, so a
  refund within d days needs no clawback.

Example: a $20.00 payment earns the referrer 200 points (10%). Refunded after the referrer spent 150
of them, the clawback takes back 50 (their whole balance) and records 150 unrecovered. If the user
then pays $20.00 again in the same month, the month earns 200 points again.

Batches are ranges of relationship ids; each batch is one transaction: plan (a temporary table),
lock the beneficiaries' balance rows, price the clawbacks, write through the ledger writer, record
the bases. A reward or clawback that cannot be stored (over INT) is counted and logged, never failing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine

from core.job import Batch, RunContext
from core.ledger import lock_balances, undone_when, write_points
from core.settings import ConfigError, Settings
from core.sql import Queries
from jobs.settings import RewardAmount

_queries = Queries(__file__)

_BEFORE_ALL_IDS = str(UUID(int=0))
_AFTER_ALL_IDS = str(UUID(int=2**128 - 1))
FEED_COLUMNS = ("id", "user_id", "amount_cents", "status", "paid_at")


@dataclass(frozen=True)
class RewardRule:
    """One level's rule: which months, how much, and how its ledger rows look."""

    level: int
    ledger_type: str
    key_prefix: str
    note_label: str
    first_month: int
    last_month: int
    amount: RewardAmount
    points_per_usd: Decimal
    hold_days: int

    def params(self, as_of: datetime) -> dict[str, Any]:
        fixed, percent = (self.amount.points, Decimal(0)) if self.amount.points is not None \
            else (0, self.amount.percent)
        return {"level": self.level, "first_month": self.first_month, "last_month": self.last_month,
                "counts_until": as_of - timedelta(days=self.hold_days),
                "fixed_points": fixed, "percent": percent, "points_per_usd": self.points_per_usd,
                "ledger_type": self.ledger_type, "key_prefix": self.key_prefix, "note_label": self.note_label}


def check_payments_feed(engine: Engine, settings: Settings) -> None:
    """Refuse (exit 2) a payments feed that is missing or lacks a column the reward jobs read."""
    with engine.connect() as conn:
        columns = {row.attname for row in conn.execute(_queries["payments_columns"],
                                                       {"feed": settings.payments_table_sql})}
    if not columns:
        raise ConfigError(f"REWARDS_PAYMENTS_TABLE: no table or view named {settings.payments_table}")
    for column in FEED_COLUMNS:
        if column not in columns:
            raise ConfigError(f"REWARDS_PAYMENTS_TABLE: {settings.payments_table} has no column {column}")


@dataclass
class _RewardRun:
    ctx: RunContext
    rule: RewardRule

    def __post_init__(self) -> None:
        self.plan = _queries.render("plan_batch", payments=self.ctx.settings.payments_table_sql)
        self.params = {**self.rule.params(self.ctx.as_of), "as_of": self.ctx.as_of, "run_id": self.ctx.run_id}

    def batch(self, conn: Connection, after: str | None) -> Batch:
        after_id = after or _BEFORE_ALL_IDS
        size = self.ctx.settings.batch_size
        ids = conn.execute(_queries["batch_end"], {"after_id": after_id, "batch_size": size}).one()
        full = ids.relationships == size
        bounds = {**self.params, "after_id": after_id, "last_id": ids.last_id if full else _AFTER_ALL_IDS}
        self.ctx.count("relationships_scanned", ids.relationships)
        conn.execute(self.plan, bounds)
        with undone_when(conn, dry_run=self.ctx.dry_run):
            self._write_planned(conn, bounds)
        return Batch(next_after=ids.last_id if full else None, items=ids.relationships)

    def _write_planned(self, conn: Connection, bounds: dict[str, Any]) -> None:
        lock_balances(conn, conn.execute(_queries["beneficiaries"]).scalars().all())
        conn.execute(_queries["price_clawbacks"])
        written = write_points(conn, _queries.raw("planned_rows"), {}, as_of=self.ctx.as_of)
        self.ctx.record_points(written)
        clawed = conn.execute(_queries["record_clawbacks"], bounds).one()  # first: a re-earned month's
        conn.execute(_queries["record_rewards"], bounds)                   # new reward then stands alone
        self.ctx.count("clawbacks", clawed.clawbacks)
        self.ctx.count("clawed_back_points", int(clawed.clawed_back_points))
        self.ctx.count("unrecovered_points", int(clawed.unrecovered_points))
        if written.unstorable:
            self._report_unstorable(conn, written.unstorable)

    def _report_unstorable(self, conn: Connection, keys: list[str]) -> None:
        for row in conn.execute(_queries["unstorable"], {"keys": keys}):
            self.ctx.count("skipped_unstorable")
            self.ctx.log.warning("a reward or clawback does not fit the ledger's INT; skipped",
                                 action="rewards_unstorable", relationship_id=str(row.relationship_id),
                                 month=row.month, kind=row.action, points=str(row.points))


def run_reward_job(ctx: RunContext, rule: RewardRule) -> None:
    """Walk every relationship in id batches; each batch writes what its months owe now."""
    ctx.stats.update(clawbacks=0, clawed_back_points=0, unrecovered_points=0, skipped_unstorable=0)
    if rule.last_month < rule.first_month:
        ctx.stats["scan"] = "none: no reward months configured"
        return
    with ctx.engine.connect() as conn:
        total = conn.execute(_queries["count_relationships"]).scalar_one()
        ctx.stats["skipped_missing_rewarded_at"] = conn.execute(
            _queries["missing_rewarded_at"], {"level": rule.level}).scalar_one()
    ctx.batches(_RewardRun(ctx, rule).batch, total=total)
