"""expire-pending: relationships still PENDING after `REWARDS_PENDING_EXPIRY_DAYS` become EXPIRED.

Every relationship with `status = 'PENDING'` and `created_at <= as_of - N days` (default 90) gets
`status = 'EXPIRED'` and `expired_at = as_of`; no other row or column changes. The UPDATE re-checks
`status = 'PENDING'`, so a relationship the app activates while the job runs is never expired.
"""
from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from sqlalchemy import Connection

from core.job import BEFORE_ALL_IDS, Batch, Job, RunContext
from core.sql import Queries
from jobs.settings import RuleSettings

_queries = Queries(__file__)


def run(ctx: RunContext[RuleSettings]) -> None:
    cutoff = ctx.as_of - timedelta(days=ctx.settings.pending_expiry_days)
    ctx.stats["cutoff"] = cutoff.isoformat()
    ctx.stats.setdefault("relationships_expired", 0)
    with ctx.engine.connect() as conn:
        total = conn.execute(_queries["count_due"], {"cutoff": cutoff}).scalar_one()

    def expire_batch(conn: Connection, after: UUID | None) -> Batch[UUID]:
        row = conn.execute(_queries["expire_batch"], {
            "cutoff": cutoff, "as_of": ctx.as_of, "after": after or BEFORE_ALL_IDS,
            "batch_size": ctx.settings.batch_size, "dry_run": ctx.dry_run,
        }).one()
        done = row.selected if ctx.dry_run else row.expired
        ctx.count("relationships_expired", done)
        return Batch(next_after=row.last_id if row.selected == ctx.settings.batch_size else None, items=done)

    ctx.batches(expire_batch, total=total)


JOB = Job(
    name="expire-pending",
    run=run,
    settings_used=("pending_expiry_days", "batch_size"),
    description="PENDING relationships older than the expiry window become EXPIRED",
    stats_labels={"relationships_expired": "relationships expired", "cutoff": None},
)
