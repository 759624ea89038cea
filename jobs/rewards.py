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

A run plans first: one set-based statement derives, over the whole history, every row owed now that
the ledger does not hold yet (a temporary table, numbered in batches of relationships), so a daily run
costs about one pass over the data however little changed. Then each batch is one transaction: lock
the beneficiaries' balance rows, price the clawbacks, write through the ledger writer, record the
bases. A reward or clawback that cannot be stored (over INT) is counted and logged, never failing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine

from core.job import Batch, RunContext, session_tables
from core.ledger import lock_balances, undone_when, write_points
from core.settings import ConfigError, Settings
from core.sql import Queries
from jobs.settings import RewardAmount

_queries = Queries(__file__)

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
    batches: int = 0

    def __post_init__(self) -> None:
        self.params = {**self.rule.params(self.ctx.as_of), "as_of": self.ctx.as_of, "run_id": self.ctx.run_id}

    def plan(self, conn: Connection) -> int:
        """Derive what the whole history owes now into the session's run_plan; return how many
        relationships have something to write."""
        conn.execute(_queries["bulk_joins"])
        conn.execute(_queries["whole_history_through_the_coordinator"])
        conn.execute(_queries.render("plan_run", payments=self.ctx.settings.payments_table_sql),
                     {**self.params, "batch_size": self.ctx.settings.batch_size})
        conn.execute(_queries["index_plan"])
        size = conn.execute(_queries["plan_size"]).one()
        conn.commit()
        self.batches = size.batches
        return size.relationships

    def batch(self, conn: Connection, after: int | None) -> Batch:
        number = 0 if after is None else after
        conn.execute(_queries["batch_rows"], {"batch": number})
        relationships = conn.execute(_queries["batch_relationships"]).scalar_one()
        with undone_when(conn, dry_run=self.ctx.dry_run):
            self._write_planned(conn)
        return Batch.numbered(number, of=self.batches, items=relationships)

    def _write_planned(self, conn: Connection) -> None:
        lock_balances(conn, conn.execute(_queries["beneficiaries"]).scalars().all())
        conn.execute(_queries["price_clawbacks"])
        written = write_points(conn, _queries.raw("planned_rows"), {}, as_of=self.ctx.as_of)
        self.ctx.record_points(written)
        clawed = conn.execute(_queries["record_clawbacks"], self.params).one()  # first: a re-earned month's
        conn.execute(_queries["record_rewards"], self.params)                   # new reward then stands alone
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
    """Plan what the whole history owes now, then write it batch by batch."""
    ctx.stats.update(clawbacks=0, clawed_back_points=0, unrecovered_points=0, skipped_unstorable=0)
    if rule.last_month < rule.first_month:
        ctx.stats["scan"] = "none: no reward months configured"
        return
    reward_run = _RewardRun(ctx, rule)
    with ctx.engine.connect() as conn:
        counts = conn.execute(_queries["relationship_counts"], {"level": rule.level}).one()
        ctx.stats.update(relationships_scanned=counts.scanned, skipped_missing_rewarded_at=counts.missing_rewarded_at)
        with session_tables(conn, "run_plan"):
            relationships = reward_run.plan(conn)
            ctx.stats["relationships_to_write"] = relationships
            ctx.batches(reward_run.batch, total=relationships, connection=conn)
