"""What recurring-rewards and level2-rewards share: one rule, one statement per step (rewards.sql).

The rule is docs/rules.md's reading of SPEC v3. Each run derives from the data as it is now
(relationships, payments, the rewards already written, settings, as-of) what every month owes, and
writes the difference; nothing is remembered between runs, so whatever moved (a payment recorded
late, its date or amount corrected, a refund or its reversal, a relationship's rewarded_at, referrer or
parent changed, a relationship deleted and re-inserted, a re-run of a past date) is settled by the
next run.

- **Months** are identified by (referred user, level, k): month k is
  `[rewarded_at + k months, rewarded_at + (k+1) months)` of the referred user's relationship, in UTC.
  A month is *paid* when the referred user has a usable `PAID` payment in it with
  `paid_at <= as_of - REWARDS_REWARD_HOLD_DAYS days`; its basis payment is the earliest one.
- **The basis rule.** A reward stands while its basis payment is in the feed, `PAID`, at the amount
  recorded, and in the reward's month under the relationship's current `rewarded_at`. When the basis
  stops holding, the job claws the reward back (`clawback:{key}`), taking min(the reward's points not
  yet expired, the beneficiary's balance); the rest is unrecovered. The month then earns again from
  its current basis, if it has one. Settings, statuses, referrers and parents never take a reward back.
- **Recovery** (`REWARDS_RECOVERY=on`): after the credits, unrecovered points are taken back from
  beneficiaries whose balance is above zero (`recover:{beneficiary}:{as_of}:{level}`), so a month that
  earns again after an unrecovered clawback is paid once.
- **Past as-ofs** never reverse or recover a row dated after them; **bad feed rows** (a view's row with a
  NULL, a negative amount, an unknown status, an id seen twice) are skipped, counted and logged.

Example: a $20.00 payment earns the referrer 200 points (10%). Billing moves its `paid_at` into the
next month: the next run claws the 200 back and pays the next month 200 from the same payment, once.

A run plans first: one set-based statement derives, over the whole history, every row owed now that
the ledger does not hold yet (a temporary table, numbered in batches of about `REWARDS_BATCH_SIZE` rows,
each referred user's rows together), so a daily run costs about one pass over the data however little
changed. Then each batch is one transaction: lock the beneficiaries' balance rows, price the clawbacks,
write through the ledger writer, record the bases. A reward or clawback that cannot be stored (over INT)
is counted and logged, never failing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import Connection, Engine, TextClause, text

from core.job import Batch, RunContext, session_tables
from core.ledger import lock_balances, undone_when, write_points
from core.settings import ConfigError
from core.sql import Queries
from jobs.settings import RewardAmount, RuleSettings

_queries = Queries(__file__)

FEED_COLUMNS = ("id", "user_id", "amount_cents", "status", "paid_at")

# The reward jobs' stats as a person reads them (`Job.stats_labels`), what changed first; None: bookkeeping.
STATS_LABELS: dict[str, str | None] = {
    "clawbacks": "clawbacks",
    "clawed_back_points": "points clawed back",
    "expired_before_clawback_points": "points of clawed-back rewards already expired",
    "unrecovered_points": "points unrecovered",
    "recoveries": "recoveries",
    "recovered_points": "unrecovered points recovered",
    "skipped_feed_rows": "payments feed rows skipped",
    "skipped_unstorable": "rows too large for the ledger, skipped",
    "conflicting_keys": "reward keys the ledger held with another row, paid under their next key",
    "relationships_scanned": "relationships scanned",
    "referred_users_to_write": "referred users with rows to write",
    "skipped_missing_rewarded_at": "skipped without rewarded_at",
    "scan": None,
}


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

    def params(self, as_of: datetime) -> dict[str, object]:
        fixed, percent = (self.amount.points, Decimal(0)) if self.amount.points is not None \
            else (0, self.amount.percent)
        counts_until = as_of - timedelta(days=self.hold_days)
        return {"as_of": as_of, "level": self.level, "first_month": self.first_month, "last_month": self.last_month,
                "counts_until": counts_until, "seen_until": counts_until, "hold_days": self.hold_days,
                "explain": False, "only_referred": None,
                "fixed_points": fixed, "percent": percent, "points_per_usd": self.points_per_usd,
                "ledger_type": self.ledger_type, "key_prefix": self.key_prefix, "note_label": self.note_label}


def check_payments_feed(engine: Engine, settings: RuleSettings) -> None:
    """Refuse (exit 2) a payments feed that is missing or lacks a column the reward jobs read."""
    with engine.connect() as conn:
        columns = {row.attname for row in conn.execute(_queries["payments_columns"],
                                                       {"feed": settings.payments_table_sql})}
    if not columns:
        raise ConfigError(f"REWARDS_PAYMENTS_TABLE: no table or view named {settings.payments_table}")
    for column in FEED_COLUMNS:
        if column not in columns:
            raise ConfigError(f"REWARDS_PAYMENTS_TABLE: {settings.payments_table} has no column {column}")


def month_facts(payments: str) -> TextClause:
    """The one derivation of what a level owes (rewards.sql's month_facts), over the feed SQL `payments`:
    the jobs plan from it, `explain` reads it for one user."""
    return text(_queries.raw("month_facts").format(payments=payments))


def plan_statement(payments: str) -> TextClause:
    """The run's plan: month_facts' rewards and clawbacks into the session's run_plan."""
    return text(_queries.raw("plan_run").replace("{month_facts}", month_facts(payments).text))


# How many skipped feed rows a run logs one by one; past that, one line says how many more.
_LOGGED_SKIPPED_ROWS = 100
# How many times one batch moves a reward past keys the ledger holds with another row (each a forgery).
_REKEYS = 3


def feed_sql(conn: Connection, settings: RuleSettings) -> str:
    """The SQL that reads the feed's usable rows: the table itself when its constraints make every row
    usable, else a filtered read of it (rewards.sql's usable_feed)."""
    feed = settings.payments_table_sql
    if conn.execute(_queries["feed_is_clean"], {"feed": feed}).scalar():
        return feed
    return _queries.raw("usable_feed").format(feed=feed)


def usable_feed(ctx: RunContext[RuleSettings], conn: Connection) -> str:
    """`feed_sql`, after the rows it skips were counted in the run's stats and logged."""
    payments = feed_sql(conn, ctx.settings)
    if payments == ctx.settings.payments_table_sql:
        return payments
    skipped = conn.execute(_queries.render("skipped_feed_rows", feed=ctx.settings.payments_table_sql)).all()
    ctx.stats["skipped_feed_rows"] = len(skipped)
    for row in skipped[:_LOGGED_SKIPPED_ROWS]:
        ctx.log.warning("a payments feed row cannot be used; skipped", action="feed_row_skipped",
                        payment_id=row.payment_id, reason=row.reason)
    if len(skipped) > _LOGGED_SKIPPED_ROWS:
        ctx.log.warning("more payments feed rows skipped", action="feed_rows_skipped",
                        more=len(skipped) - _LOGGED_SKIPPED_ROWS)
    return payments


@dataclass
class _RewardRun:
    ctx: RunContext[RuleSettings]
    rule: RewardRule
    batches: int = 0

    def __post_init__(self) -> None:
        self.params = {**self.rule.params(self.ctx.as_of), "run_id": self.ctx.run_id,
                       "as_of_key": self.ctx.as_of.astimezone(timezone.utc).isoformat()}

    def plan(self, conn: Connection) -> int:
        """Derive what the whole history owes now into the session's run_plan; return how many
        referred users have something to write."""
        payments = usable_feed(self.ctx, conn)
        conn.execute(_queries["bulk_joins"])
        conn.execute(_queries["whole_history_through_the_coordinator"])
        conn.execute(plan_statement(payments), {**self.params, "batch_size": self.ctx.settings.batch_size})
        conn.execute(_queries["index_plan"])
        size = conn.execute(_queries["plan_size"]).one()
        conn.commit()
        self.batches = size.batches
        return int(size.referred_users)

    def batch(self, conn: Connection, after: int | None) -> Batch[int]:
        number = 0 if after is None else after
        conn.execute(_queries["batch_rows"], {"batch": number})
        referred_users = conn.execute(_queries["batch_referred_users"]).scalar_one()
        with undone_when(conn, dry_run=self.ctx.dry_run):
            self._write_planned(conn)
            effects = conn.execute(_queries["batch_effects"]).mappings().all() if self.ctx.dry_run else []
        if effects:  # kept after the undo, so the dry run's recovery reckons with what the batch did
            conn.execute(_queries["keep_batch_effects"],
                         {"effects": json.dumps([{**row, "user_id": str(row["user_id"])} for row in effects],
                                                default=int)})
        return Batch.numbered(number, of=self.batches, items=referred_users)

    def _write_planned(self, conn: Connection) -> None:
        lock_balances(conn, conn.execute(_queries["beneficiaries"]).scalars().all())
        conn.execute(_queries["hash_joins_only"])
        conn.execute(_queries["price_clawbacks"])
        conn.execute(_queries["default_joins"])
        written = write_points(conn, _queries.raw("planned_rows"), {}, as_of=self.ctx.as_of)
        self.ctx.record_points(written)
        clawed = conn.execute(_queries["record_clawbacks"], self.params).one()  # first: a re-earned month's
        unstorable = written.unstorable + self._record_rewards(conn, written.unstorable)  # new reward then alone
        self.ctx.count("clawbacks", clawed.clawbacks)
        self.ctx.count("clawed_back_points", int(clawed.clawed_back_points))
        self.ctx.count("expired_before_clawback_points", int(clawed.expired_points))
        self.ctx.count("unrecovered_points", int(clawed.unrecovered_points))
        if unstorable:
            self._report_unstorable(conn, unstorable)

    def _record_rewards(self, conn: Connection, unstorable: list[str]) -> list[str]:
        """Record the batch's rewards now in the ledger. A key the ledger already held with another user,
        type or amount (not this rule's row) is never taken as paid: the month is written under its next
        key, and the foreign row is left to the rules audit. Returns the keys of those rewritten rows that
        could not be stored."""
        not_written = sum(1 for key in unstorable if not key.startswith("clawback:"))
        rewards = conn.execute(_queries["record_rewards"], self.params).one()
        recorded = rewards.recorded
        rewritten_unstorable: list[str] = []
        for _attempt in range(_REKEYS):
            if recorded + not_written + len(rewritten_unstorable) >= rewards.planned:
                break
            conflicting = self._report_conflicting_keys(conn)
            if not conflicting:
                break
            new_keys = conn.execute(_queries["rekey_conflicting"], {**self.params, "keys": conflicting}).scalars().all()
            rewritten = write_points(conn, _queries.raw("planned_rows_among"), {"keys": new_keys},
                                     as_of=self.ctx.as_of)
            self.ctx.record_points(rewritten)
            rewritten_unstorable += rewritten.unstorable
            recorded += conn.execute(_queries["record_rewards"], self.params).one().recorded
        return rewritten_unstorable

    def _report_conflicting_keys(self, conn: Connection) -> list[str]:
        keys = []
        for row in conn.execute(_queries["conflicting_keys"]):
            keys.append(row.idempotency_key)
            self.ctx.count("conflicting_keys")
            self.ctx.log.warning("the ledger holds this reward's key with another user, type or amount; the month "
                                 "is written under its next key", action="reward_key_conflict",
                                 key=row.idempotency_key, relationship_id=str(row.relationship_id), month=row.month,
                                 points=str(row.points), ledger_points=row.ledger_points, ledger_type=row.ledger_type)
        return keys

    def _report_unstorable(self, conn: Connection, keys: list[str]) -> None:
        for row in conn.execute(_queries["unstorable"], {"keys": keys}):
            self.ctx.count("skipped_unstorable")
            self.ctx.log.warning("a reward or clawback does not fit the ledger's INT; skipped",
                                 action="rewards_unstorable", relationship_id=str(row.relationship_id),
                                 month=row.month, kind=row.action, points=str(row.points))

    def plan_recoveries(self, conn: Connection) -> int:
        """The beneficiaries with unrecovered points outstanding, in the session's recovery_plan."""
        conn.execute(_queries["plan_recoveries"], {**self.params, "batch_size": self.ctx.settings.batch_size})
        size = conn.execute(_queries["recovery_plan_size"]).one()
        conn.commit()
        self.batches = size.batches
        return int(size.beneficiaries)

    def recovery_batch(self, conn: Connection, after: int | None) -> Batch[int]:
        number = 0 if after is None else after
        users = conn.execute(_queries["recovery_batch_users"], {"batch": number}).scalars().all()
        with undone_when(conn, dry_run=self.ctx.dry_run):
            lock_balances(conn, users)
            conn.execute(_queries["recovery_rows"], {**self.params, "user_ids": [str(user) for user in users]})
            written = write_points(conn, _queries.raw("recovery_candidates"), {}, as_of=self.ctx.as_of)
            self.ctx.record_points(written)
            conn.execute(_queries["attribute_recoveries"], self.params)
            self.ctx.count("recoveries", written.total_rows)
            self.ctx.count("recovered_points", -written.points.get("REFERRAL_CLAWBACK", 0))
        return Batch.numbered(number, of=self.batches, items=len(users))


def run_reward_job(ctx: RunContext[RuleSettings], rule: RewardRule) -> None:
    """Plan what the whole history owes now, write it batch by batch, then recover what is owed back."""
    ctx.stats.update(clawbacks=0, clawed_back_points=0, expired_before_clawback_points=0, unrecovered_points=0,
                     recoveries=0, recovered_points=0, skipped_unstorable=0, skipped_feed_rows=0,
                     conflicting_keys=0)
    if rule.last_month < rule.first_month:
        ctx.stats["scan"] = "none: no reward months configured"
        return
    reward_run = _RewardRun(ctx, rule)
    with ctx.engine.connect() as conn:
        counts = conn.execute(_queries["relationship_counts"], {"level": rule.level}).one()
        ctx.stats.update(relationships_scanned=counts.scanned, skipped_missing_rewarded_at=counts.missing_rewarded_at)
        with session_tables(conn, "run_plan", "dry_run_effects", "recovery_plan"):
            conn.execute(_queries["dry_run_effects"])
            conn.commit()
            referred_users = reward_run.plan(conn)
            ctx.stats["referred_users_to_write"] = referred_users
            ctx.batches(reward_run.batch, total=referred_users, connection=conn)
            if ctx.settings.recovery:
                beneficiaries = reward_run.plan_recoveries(conn)
                if beneficiaries:
                    ctx.batches(reward_run.recovery_batch, total=beneficiaries, connection=conn)
