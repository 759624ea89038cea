"""expire-points: points expire `REWARDS_POINTS_EXPIRY_MONTHS` after they were earned, oldest first.

With `cutoff = as_of - N months` (PostgreSQL month arithmetic in UTC), for every user:
`due = (sum of positive deltas with created_at < cutoff) - (sum of |negative deltas|)`, over all
types, earlier EXPIRY rows and clawbacks included, whatever the debits' dates (a debit dated after
the as-of instant, e.g. a redemption committed meanwhile, has consumed the oldest points already).
Where `due > 0`: one EXPIRY row with `delta = -due`, `ref_id` NULL, key
`expiry:{user_id}:{as_of ISO-8601 in UTC}` (e.g. `expiry:…:2026-06-01T00:45:00+00:00`); when that key
exists and due is still positive (points back-filled since, then a re-run of the same as-of), the
rest is written with key `expiry:{user_id}:{as_of}:{n}`, n = 2, 3, … N = 0 turns the job off.

Every run derives due from the whole ledger (nothing is remembered between runs, so a back-fill is
never missed): it walks the users with points earned before cutoff in user_id batches. Each batch
locks its users' balance rows (user_id order) before it reads their ledger sums, so a redemption
committed while it waited is counted, never expired twice, and a balance never goes below zero.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, text

from core.job import Batch, Job, RunContext
from core.ledger import lock_balances, undone_when, write_points
from core.sql import Queries

_queries = Queries(__file__)
_BEFORE_ALL_IDS = UUID(int=0)


def expiry_key_instant(as_of: datetime) -> str:
    """The as-of part of an EXPIRY row's idempotency key: ISO-8601 in UTC."""
    return as_of.astimezone(timezone.utc).isoformat()


def run(ctx: RunContext) -> None:
    months = ctx.settings.points_expiry_months
    if months == 0:
        ctx.stats["disabled"] = True
        ctx.log.info("points expiry is off", action="expire_points_disabled")
        return
    with ctx.engine.connect() as conn:
        cutoff = conn.execute(_queries["cutoff"], {"as_of": ctx.as_of, "months": months}).scalar_one()
        total = conn.execute(_queries["count_users"]).scalar_one()
    ctx.stats["cutoff"] = cutoff.isoformat()
    ctx.stats.update(users_checked=0, users_expired=0)
    ctx.batches(lambda conn, after: _expire_batch(ctx, conn, after, cutoff), total=total)


def _expire_batch(ctx: RunContext, conn: Connection, after: Any, cutoff: datetime) -> Batch:
    """One batch of users with points earned before cutoff: find those with something due, lock their
    balance rows, then write what is due, read again from the ledger under the lock. (Only a user
    with something due is locked: a debit committed meanwhile can only lower a due, never raise one.)"""
    user_ids = [str(row.user_id) for row in conn.execute(_queries["candidate_batch"], {
        "cutoff": cutoff, "after": after or _BEFORE_ALL_IDS, "batch_size": ctx.settings.batch_size,
    })]
    if not user_ids:
        return Batch(next_after=None)
    keys = {"cutoff": cutoff, "as_of_key": expiry_key_instant(ctx.as_of), "cutoff_key": cutoff.isoformat()}
    due = [str(row.user_id) for row in conn.execute(_DUE_USERS, {**keys, **_users(user_ids)})]
    if due:
        with undone_when(conn, dry_run=ctx.dry_run):
            lock_balances(conn, due)
            written = write_points(conn, _queries.raw("expiry_candidates"), {**keys, **_users(due)},
                                   as_of=ctx.as_of)
        ctx.record_points(written)
        ctx.count("users_expired", written.users)
    ctx.count("users_checked", len(user_ids))
    done = len(user_ids) < ctx.settings.batch_size
    return Batch(next_after=None if done else user_ids[-1], items=len(user_ids))


def _users(user_ids: list[str]) -> dict[str, Any]:
    """A batch's users as the statements take them: the list, and the same as a range."""
    return {"user_ids": user_ids, "first_user_id": user_ids[0], "last_user_id": user_ids[-1]}


_DUE_USERS = text(f"SELECT user_id FROM ({_queries.raw('expiry_candidates')}) AS due ORDER BY user_id")


JOB = Job(
    name="expire-points",
    run=run,
    settings_used=("points_expiry_months", "batch_size"),
    description="points older than the expiry window expire, oldest first (FIFO)",
)
