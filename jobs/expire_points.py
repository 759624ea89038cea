"""expire-points: points expire `REWARDS_POINTS_EXPIRY_MONTHS` after they were earned, oldest first.

With `cutoff = as_of - N months` (PostgreSQL month arithmetic in UTC), for every user:
`due = (sum of lots with created_at < cutoff) - (sum of |negative deltas| other than clawbacks)`,
whatever the debits' dates (a debit dated after the as-of instant, e.g. a redemption committed
meanwhile, has consumed the oldest points already). Each positive row is a lot; a reward's lot is
reduced by its own clawback, which therefore never consumes (or postpones the expiry of) older
points; recoveries and every other debit, earlier EXPIRY rows included, consume the oldest lots
(docs/rules.md). An expiry that cannot be stored (over INT) is counted and logged, never failing.
Where `due > 0`: one EXPIRY row with `delta = -due`, `ref_id` NULL, key
`expiry:{user_id}:{as_of ISO-8601 in UTC}` (e.g. `expiry:…:2026-06-01T00:45:00+00:00`); when that key
exists and due is still positive (points back-filled since, then a re-run of the same as-of), the
rest is written with key `expiry:{user_id}:{as_of}:{n}`, n = 2, 3, … N = 0 turns the job off.

Every run derives due from the whole ledger (nothing is remembered between runs, so a back-fill is
never missed): one pass over the ledger finds the users with something due, and batches of them
(user_id order) lock their balance rows before they read their ledger sums again, so a redemption
committed while a batch waited is counted, never expired twice, and a balance never goes below zero.
(Only a user with something due is locked: a debit committed meanwhile can only lower a due.)
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Row

from core.job import Batch, Job, RunContext, session_tables
from core.ledger import lock_balances, undone_when, write_points
from core.sql import Queries, uuid_array
from jobs.settings import RuleSettings

_queries = Queries(__file__)


def expiry_key_instant(as_of: datetime) -> str:
    """The as-of part of an EXPIRY row's idempotency key: ISO-8601 in UTC."""
    return as_of.astimezone(timezone.utc).isoformat()


def run(ctx: RunContext[RuleSettings]) -> None:
    months = ctx.settings.points_expiry_months
    if months == 0:
        ctx.stats["disabled"] = True
        ctx.log.info("points expiry is off", action="expire_points_disabled")
        return
    with ctx.engine.connect() as conn:
        cutoff = conn.execute(_queries["cutoff"], {"as_of": ctx.as_of, "months": months}).scalar_one()
        ctx.stats["cutoff"] = cutoff.isoformat()
        ctx.stats.update(users_expired=0, skipped_unstorable=0)
        with session_tables(conn, "expiry_plan"):
            plan = _plan(ctx, conn, cutoff)
            keys = {"cutoff": cutoff, "as_of_key": expiry_key_instant(ctx.as_of), "cutoff_key": cutoff.isoformat()}
            ctx.batches(lambda conn, after: _expire_batch(ctx, conn, after or 0, plan.batches, keys),
                        total=plan.users_due, connection=conn)


def _plan(ctx: RunContext[RuleSettings], conn: Connection, cutoff: datetime) -> Row[Any]:
    """One pass over the ledger: the users with something due, in the session's expiry_plan."""
    conn.execute(_queries["plan_run"], {"cutoff": cutoff, "as_of": ctx.as_of,
                                        "batch_size": ctx.settings.batch_size})
    conn.execute(_queries["index_plan"])
    plan = conn.execute(_queries["plan_size"]).one()
    conn.commit()
    ctx.stats.update(users_checked=plan.users_checked, users_to_expire=plan.users_due)
    return plan


def _expire_batch(ctx: RunContext[RuleSettings], conn: Connection, number: int, batches: int,
                  keys: dict[str, object]) -> Batch[int]:
    """One batch of the users with something due: lock their balance rows, then write what is due,
    read again from the ledger under the lock."""
    users = conn.execute(_queries["batch_users"], {"batch": number}).all()
    user_ids = [str(user.user_id) for user in users]
    if user_ids:
        debited_at_as_of = [str(user.user_id) for user in users if user.debited_at_as_of]
        with undone_when(conn, dry_run=ctx.dry_run):
            lock_balances(conn, user_ids)
            written = write_points(conn, _queries.raw("expiry_candidates"),
                                   {**keys, **_users(user_ids), "debited_at_as_of": uuid_array(debited_at_as_of)},
                                   as_of=ctx.as_of)
        ctx.record_points(written)
        ctx.count("users_expired", written.users)
        for key in written.unstorable:
            ctx.count("skipped_unstorable")
            ctx.log.warning("an expiry does not fit the ledger's INT; skipped", action="expiry_unstorable",
                            idempotency_key=key)
    return Batch.numbered(number, of=batches, items=len(user_ids))


def _users(user_ids: list[str]) -> dict[str, object]:
    """A batch's users as the statements take them: one array literal (not a list parameter, which
    psycopg2 sends as 5,000 constants for the server to parse), and the same users as a range."""
    return {"user_ids": uuid_array(user_ids), "first_user_id": user_ids[0], "last_user_id": user_ids[-1]}


JOB = Job(
    name="expire-points",
    run=run,
    settings_used=("points_expiry_months", "batch_size"),
    description="points older than the expiry window expire, oldest first (FIFO)",
    stats_labels={"users_expired": "users' points expired", "skipped_unstorable": "rows too large for the ledger, skipped",
                  "users_checked": "users checked", "users_to_expire": "users with points due", "cutoff": None},
)
