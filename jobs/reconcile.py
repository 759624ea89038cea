"""reconcile: is the balance cache true to the ledger, and what moved since the last reconcile?

In one REPEATABLE READ READ ONLY snapshot, every user's cache row is compared with the ledger
(`balance` = sum(delta), `total_earned` = sum of positive deltas, `total_spent` = sum of negative
deltas). A user is a discrepancy with one or more kinds: MISSING_BALANCE (ledger rows, no cache row),
ORPHAN_BALANCE (a cache row with a nonzero field and no ledger rows), BALANCE_MISMATCH,
EARNED_MISMATCH, SPENT_MISMATCH (both sides exist and differ), CACHE_INCONSISTENT (cache
`balance <> total_earned + total_spent`), NEGATIVE_BALANCE (ledger balance below zero). App writes
(ledger row and cache together) committed while the run reads are outside its snapshot, so they never
show as a discrepancy. The summary's roll-forward: `opening` (the closing of the latest successful
reconcile for an earlier as-of) + issued by type - spent by type - expired - clawed back +
late-committed = `closing`. With `--repair` (or `REWARDS_RECONCILE_REPAIR`) each discrepant user's
cache row is set to the ledger's sums.

A run is an audit, then its publication:

- `jobs/reconcile_audit.py` (+ `.sql`) reads the snapshot: the comparison (the ledger read once,
  grouped by user, the discrepant users streamed through COPY), the movements and the roll-forward's
  figures, the period's clawbacks, the rules audit (`jobs/rules_audit.py`); the result is a value,
  `Audit`. `jobs/reconcile_summary.py` is the summary's plain arithmetic on it.
- `jobs/reconcile_publish.py` (+ `.sql`) makes it public, all-or-nothing: the files aside (`jobs/reports/`),
  then the repairs, the `reconciliation_runs` row and the run's end in one transaction, then the files
  in place. A dry run's publisher writes nothing: no table, no file, no repair.

`tests/integration/test_reconcile_totals.py` holds every figure to a from-scratch recomputation over
random ledgers, chains of runs and late rows.
"""
from __future__ import annotations

from core.job import Job, RunContext
from jobs.reconcile_audit import audit
from jobs.reconcile_publish import publisher_for
from jobs.reconcile_summary import Summary
from jobs.settings import RuleSettings

# The runs that write ledger rows: a reconcile waits for them to finish (bounded).
LEDGER_WRITERS = ("recurring-rewards", "level2-rewards", "expire-points")


def run(ctx: RunContext[RuleSettings]) -> None:
    """Audit the snapshot, then publish what it found (a dry run publishes nothing)."""
    ctx.wait_for_jobs(LEDGER_WRITERS, timeout_seconds=ctx.settings.reconcile_wait_seconds)
    with publisher_for(ctx) as publisher:
        found = audit(ctx, publisher.store)
        summary = publisher.publish(found)
    _say_done(ctx, summary)


def _say_done(ctx: RunContext[RuleSettings], summary: Summary) -> None:
    ctx.log.info("reconciliation done", action="reconcile_done", discrepancies=summary.discrepancies["total"],
                 net_drift=summary.net_drift, gap=summary.roll_forward.gap,
                 late_committed=summary.roll_forward.late_committed["points"],
                 repaired=summary.repaired)


JOB = Job(
    name="reconcile",
    run=run,
    settings_used=("reports_dir", "batch_size"),
    description="compare the balance cache with the ledger; report (CSV, JSON) and optionally repair",
    writes_reports=True,
    stats_labels={
        "discrepancies": "discrepancies", "findings": "rules audit findings", "repaired": "cache rows repaired",
        "net_drift": "points net drift", "roll_forward_gap": "points roll-forward gap",
        "outstanding_points": "points outstanding", "users_checked": "users checked",
        "report": None, "discrepancies_by_kind": None, "invariant_violations": None,
    },
)
