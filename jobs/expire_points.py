"""expire-points: points expire `REWARDS_POINTS_EXPIRY_MONTHS` after they were earned, oldest first.

With `cutoff = as_of - N months` (PostgreSQL month arithmetic in UTC), for every user:
`due = (sum of positive deltas with created_at < cutoff) - (sum of |negative deltas|)`, over all
types, earlier EXPIRY rows included. Where `due > 0`: one EXPIRY row with `delta = -due`, `ref_id`
NULL, key `expiry:{user_id}:{as_of.isoformat()}` (as_of in UTC, Python's ISO form, e.g.
`expiry:…:2026-06-01T00:45:00+00:00`), written through the ledger writer. N = 0 turns the job off.

Debits count whatever their date. SPEC.md bounds them by `created_at <= as_of`; the two agree unless
a debit is dated after as_of, and such a debit was committed before this expiry (a redemption
between the as-of instant and the run, or, for a back-dated run, a later run's EXPIRY), so FIFO says it
already consumed the oldest points. Counting it keeps SPEC's promises: a redemption committed meanwhile
is counted, nothing is expired twice, and due never exceeds the ledger balance, so a balance never
goes below zero.

Race safety: each batch locks its users' balance rows (user_id order) before it reads their ledger
sums in a later statement, so a redemption committed while it waited is counted.

Only users with points crossing the cutoff are read: after a successful run every user's due was
<= 0, and due only grows when earned points cross the cutoff, so a run reads the users with a positive
row dated in [previous successful run's cutoff, cutoff). The first run reads every user with points
before cutoff, and so does a run that finds earning rows dated before the previous cutoff written
since that run (a back-fill; the count of such rows is kept in the run's stats and compared).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from core.job import Batch, Job, RunContext
from core.ledger import write_points
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
        previous = conn.execute(_queries["previous_run"], {"as_of": ctx.as_of}).first()
        counts = conn.execute(_queries["earned_rows_before"], {
            "cutoff": cutoff, "previous_cutoff": previous.cutoff if previous else None}).one()
        window = {"since": _window_start(ctx, previous, counts), "cutoff": cutoff}
        total = conn.execute(_queries["count_candidates"], window).scalar_one()
    ctx.stats["cutoff"] = cutoff.isoformat()
    ctx.stats["earned_rows_before_cutoff"] = int(counts.before_cutoff)
    if window["since"] is not None:
        ctx.stats["since"] = window["since"].isoformat()
    ctx.stats.update(users_checked=0, users_expired=0)
    ctx.batches(lambda conn, after: _expire_batch(ctx, conn, after, window), total=total)


def _window_start(ctx: RunContext, previous: Any | None, counts: Any) -> datetime | None:
    """Candidates are the users with earning rows dated in [previous cutoff, cutoff); None means every
    user with earning rows before cutoff: on a first run, and when earning rows dated before the previous
    cutoff were written after that run (a back-fill), which a window would miss."""
    if previous is None:
        return None
    if previous.earned_rows_before_cutoff != counts.before_previous_cutoff:
        late = int(counts.before_previous_cutoff) - int(previous.earned_rows_before_cutoff or 0)
        ctx.stats["backfilled_rows"] = late
        ctx.log.warning("earning rows dated before the previous run's cutoff were written since it ran;"
                        " reading every user", action="expire_points_backfill_found", rows=late)
        return None
    return previous.cutoff


def _expire_batch(ctx: RunContext, conn: Connection, after: Any, window: dict[str, Any]) -> Batch:
    """One batch of candidate users: lock their balance rows, then write what is due from the ledger."""
    query = "first_candidate_batch" if window["since"] is None else "candidate_batch"
    user_ids = [str(row.user_id) for row in conn.execute(_queries[query], {
        **window, "after": after or _BEFORE_ALL_IDS, "batch_size": ctx.settings.batch_size,
    })]
    if not user_ids:
        return Batch(next_after=None)
    if not ctx.dry_run:
        conn.execute(_queries["lock_balances"], {"user_ids": user_ids})
    written = write_points(conn, _queries.raw("expiry_candidates"), {
        "user_ids": user_ids, "first_user_id": user_ids[0], "last_user_id": user_ids[-1],
        "cutoff": window["cutoff"],
        "as_of_key": expiry_key_instant(ctx.as_of), "cutoff_key": window["cutoff"].isoformat(),
    }, as_of=ctx.as_of, dry_run=ctx.dry_run)
    ctx.record_points(written)
    ctx.count("users_checked", len(user_ids))
    ctx.count("users_expired", written.users)
    done = len(user_ids) < ctx.settings.batch_size
    return Batch(next_after=None if done else user_ids[-1], items=len(user_ids))


JOB = Job(
    name="expire-points",
    run=run,
    settings_used=("points_expiry_months", "batch_size"),
    description="points older than the expiry window expire, oldest first (FIFO)",
)
