"""expiring-soon: tell the CRM which points will expire soon, so users can be warned. No ledger writes.

With `N = REWARDS_POINTS_EXPIRY_MONTHS` and the window `(as_of, as_of + REWARDS_EXPIRY_NOTICE_DAYS days]`,
for each user `E(t)` = sum of positive deltas with `created_at < t - N months`, `D` = sum of |negative
deltas| (all, as for expire-points), and the points expiring by `t` are
`X(t) = max(0, E(t) - D) - max(0, E(as_of) - D)`. For each UTC day `d` meeting the window, the points
expiring on `d` are `X(min(end of d, window end)) - X(max(start of d, as_of))`; one row per user and
day where they are above 0. Where a month end makes `t - N months` step back (Mar 29 00:00 - 1 month
is Feb 28 00:00, earlier than Mar 28 12:00 - 1 month), the cutoff reached so far is kept, as daily
expire-points runs would have it: a point is never announced twice.

The CSV `expiring-{as_of:%Y%m%dT%H%M%SZ}-{run}.csv` (header `user_id,points,expires_on,balance`,
`balance` the user's ledger balance now, ordered by `expires_on, user_id`) is written aside and renamed
into place whole; a run with nothing expiring writes the header alone, so the CRM can tell "nothing
expires" from "the job did not run". Only a user with an earning row in the 30-odd days that
cross a cutoff can have points expiring, so those users are found by date (an index) and only their
ledgers are summed, not every user's.

A dry run computes the same rows and stats but writes no file. `REWARDS_EXPIRY_NOTICE_DAYS=0` or
`REWARDS_POINTS_EXPIRY_MONTHS=0` turns the job off (no file, stats say why).
"""
from __future__ import annotations

import csv
import itertools
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, NamedTuple, TextIO

from core import runs
from core.job import Job, RunContext
from core.reports import CannotWrite, FileSet, settle_leftovers
from core.sql import Queries
from core.stream import copy_rows
from jobs.settings import RuleSettings

_queries = Queries(__file__)
CSV_HEADER = ("user_id", "points", "expires_on", "balance")
LEFTOVERS = ".expiring-*.part"  # what a run that stopped before publishing leaves aside (core/reports.py)
_FILE_NAME = re.compile(r"expiring-\d{8}T\d{6}Z-(\d+)\.csv")


def file_for_run(reports_dir: Path, as_of: datetime, run_id: int) -> Path:
    return reports_dir.resolve() / f"expiring-{as_of.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}.csv"


def run(ctx: RunContext[RuleSettings]) -> None:
    settings = ctx.settings
    if settings.expiry_notice_days == 0 or settings.points_expiry_months == 0:
        reason = "REWARDS_EXPIRY_NOTICE_DAYS" if settings.expiry_notice_days == 0 else "REWARDS_POINTS_EXPIRY_MONTHS"
        ctx.stats["disabled"] = f"{reason}=0"
        ctx.log.info("expiring-soon notices are off", action="expiring_soon_disabled", reason=reason)
        return
    window_end = ctx.as_of + timedelta(days=settings.expiry_notice_days)
    ctx.stats.update(window_end=window_end.isoformat(), users=0, points=0, rows=0)
    if ctx.dry_run:
        _write_rows(ctx, window_end, None)
    else:
        _write_and_record(ctx, window_end, file_for_run(settings.reports_dir, ctx.as_of, ctx.run_id))
    ctx.log.info("expiring-soon done", action="expiring_soon_done", users=ctx.stats["users"],
                 points=ctx.stats["points"], file=ctx.stats.get("file"))


def _write_and_record(ctx: RunContext[RuleSettings], window_end: datetime, target: Path) -> None:
    """The CSV written aside and sealed, the run recorded (SUCCEEDED), then the file renamed into place:
    a run that is not recorded never leaves a file under a final name, so a killed run and the run that
    takes over never leave two files for one as-of. A kill after the record leaves the file aside, and
    the next run publishes it."""
    _settle_leftovers(ctx, target.parent)
    staged = FileSet()
    try:
        with staged.text(target) as out:
            _write_rows(ctx, window_end, out)
        staged.seal()
        ctx.stats["file"] = str(target)
        with ctx.recording():
            pass
    except BaseException:
        staged.discard()
        raise
    try:
        staged.publish()
    except CannotWrite as failure:
        ctx.log.error("the run is recorded but its file could not be published; the next run publishes it",
                      action="expiring_soon_publish_failed", error=str(failure))


def _settle_leftovers(ctx: RunContext[RuleSettings], directory: Path) -> None:
    """Files aside are what earlier runs left (one runs at a time): a recorded run's is published, the
    others removed."""
    settled = settle_leftovers(directory, LEFTOVERS, _run_of,
                               lambda run_ids: runs.succeeded_runs(ctx.engine, JOB.name, run_ids))
    if settled.published or settled.removed:
        ctx.stats.update(leftovers_published=len(settled.published), leftovers_removed=len(settled.removed))
        ctx.log.warning("settled the files earlier runs left aside", action="expiring_soon_leftovers",
                        published=settled.published, removed=settled.removed)


def _run_of(name: str) -> int | None:
    matched = _FILE_NAME.fullmatch(name)
    return int(matched.group(1)) if matched else None


def _write_rows(ctx: RunContext[RuleSettings], window_end: datetime, out: TextIO | None) -> None:
    writer = csv.writer(out, lineterminator="\n") if out else None
    if writer:
        writer.writerow(CSV_HEADER)
    chunk_numbers = itertools.count(1)

    def take(values: list[tuple[str | None, ...]]) -> None:
        chunk = [_Expiring._make(row) for row in values]  # `expiring` selects no NULL
        _count(ctx, chunk)
        if writer:
            writer.writerows(_csv_row(row) for row in chunk)
        ctx.progress(job=ctx.job, batches=next(chunk_numbers), items=ctx.stats["rows"], total=None)
        ctx.check_stop()

    with ctx.engine.connect() as conn:
        copy_rows(conn, _queries["expiring"], {
            "as_of": ctx.as_of, "window_end": window_end, "months": ctx.settings.points_expiry_months,
        }, take, ctx.settings.batch_size)


class _Expiring(NamedTuple):
    """One row of `expiring`, as COPY's text (expires_on already YYYY-MM-DD, first_of_user t or f)."""
    user_id: str
    points: str
    expires_on: str
    balance: str
    first_of_user: str


def _count(ctx: RunContext[RuleSettings], chunk: Iterable[_Expiring]) -> None:
    for row in chunk:
        ctx.stats["rows"] += 1
        ctx.stats["points"] += int(row.points)
        ctx.stats["users"] += row.first_of_user == "t"


def _csv_row(row: _Expiring) -> list[str]:
    return [row.user_id, row.points, row.expires_on, row.balance]


JOB = Job(
    name="expiring-soon",
    run=run,
    settings_used=("points_expiry_months", "expiry_notice_days", "reports_dir"),
    description="the CRM's CSV of points expiring in the next REWARDS_EXPIRY_NOTICE_DAYS days (no ledger writes)",
    writes_reports=True,
    stats_labels={"users": "users to warn", "points": "points expiring", "rows": "lots expiring",
                  "window_end": None, "file": None},
)
