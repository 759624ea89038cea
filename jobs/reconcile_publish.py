"""reconcile's publication: what is made of an audit (`jobs/reconcile_audit.py`), by a publisher.

`FilePublisher`, all-or-nothing (SPEC "reconcile"): every file (the CSV of discrepant users, written as
they stream; the findings' CSV; the JSON summary, the HTML report and the workbook, `jobs/reports/`) is
written aside and flushed to disk first, so a full disk or a read-only folder fails the run before
anything is recorded, naming the file. Then ONE transaction (`RunContext.recording`) commits the repairs
(`--repair` or `REWARDS_RECONCILE_REPAIR`: each discrepant user's cache row set to the ledger's sums,
batch by batch under row locks held to the commit, recomputed inside them), the `reconciliation_runs`
row that counts them and the run's end, SUCCEEDED. Only then are the files renamed into place. A run
killed before that commit repaired nothing and recorded nothing; one killed after it left its files
aside, and the next reconcile publishes them (`_settle_leftovers`, which also removes what runs that
were not recorded left). The documents state the repairs before they are made (the users whose cache
row differs from the ledger in the snapshot); should the repair change another number, they are
written again inside the transaction.

`DryRunPublisher` writes nothing: no table, no file, no repair; the run's stats still tell what the
audit found.
"""
from __future__ import annotations

import re
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator, Protocol, Sequence

from sqlalchemy import Connection

from core import runs
from core.job import BEFORE_ALL_IDS, RunContext
from core.ledger import lock_balances
from core.reports import CannotWrite, FileSet, settle_leftovers
from core.sql import Queries
from jobs import rules_audit
from jobs.journal import journal_csv
from jobs.reconcile_audit import Audit, Discrepancy
from jobs.reconcile_summary import Snapshot, Summary
from jobs.reports.files import CSV_HEADER, ReportFiles, csv_row, csv_writer, summary_json
from jobs.settings import RuleSettings

_queries = Queries(__file__)


class Publisher(Protocol):
    """What is made of an audit: entered before the snapshot is read, left when the run's work ends."""

    def __enter__(self) -> Publisher: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None: ...

    def store(self, conn: Connection, chunk: Sequence[Discrepancy]) -> None:
        """A chunk of discrepant users as the audit streams them, on its short transaction's connection."""

    def publish(self, audit: Audit) -> Summary:
        """Record and publish what the audit found; return the run's summary."""


def publisher_for(ctx: RunContext[RuleSettings]) -> Publisher:
    return DryRunPublisher(ctx) if ctx.dry_run else FilePublisher(ctx)


class DryRunPublisher:
    """A dry run: the summary computed and told (the run's stats); no table, no file, no repair."""

    def __init__(self, ctx: RunContext[RuleSettings]) -> None:
        self.ctx = ctx

    def __enter__(self) -> DryRunPublisher:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None

    def store(self, conn: Connection, chunk: Sequence[Discrepancy]) -> None:
        return None

    def publish(self, audit: Audit) -> Summary:
        summary = audit.summary(self.ctx, repaired=0, files=None)
        _record_stats(self.ctx, summary, None)
        return summary


class FilePublisher:
    """The run's files aside, then its repairs, rows and end in one transaction, then the files in place."""

    def __init__(self, ctx: RunContext[RuleSettings]) -> None:
        self.ctx = ctx
        self.files = ReportFiles.for_run(ctx.settings.reports_dir, ctx.as_of, ctx.run_id)
        self.journal = journal_file(self.files)
        self.staged = FileSet()
        self._csv = ExitStack()  # the CSV of discrepant users, open aside while the audit streams them
        self._writer: Any = None
        self._recorded = False

    def __enter__(self) -> FilePublisher:
        _warm_up_reports()
        _settle_leftovers(self.ctx, self.files)
        self._writer = csv_writer(self._csv.enter_context(self.staged.text(self.files.csv)))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close the CSV (an OSError writing it names the file); a run not recorded leaves nothing."""
        try:
            self._csv.__exit__(kind, error, traceback)
        finally:
            if not self._recorded:
                self.staged.discard()

    def store(self, conn: Connection, chunk: Sequence[Discrepancy]) -> None:
        """The chunk in the CSV and in `reconciliation_discrepancies`: rows of this run, counted once it
        is recorded."""
        self._writer.writerows(csv_row(row) for row in chunk)
        if chunk:
            conn.execute(_queries["insert_discrepancies"], {
                "run_id": self.ctx.run_id,
                "user_ids": [str(row.user_id) for row in chunk],
                "kinds": ["|".join(row.kinds) for row in chunk],
                **{column: [getattr(row, column) for row in chunk] for column in CSV_HEADER[2:]},
            })

    def publish(self, audit: Audit) -> Summary:
        summary = self._write_aside(audit)
        summary = self._record(audit, summary)
        self._recorded = True
        _publish(self.ctx, self.staged)
        return summary

    def _write_aside(self, audit: Audit) -> Summary:
        """Every file aside and on disk, the findings' rows stored; the summary they state."""
        ctx, files, staged = self.ctx, self.files, self.staged
        self._csv.close()
        with staged.text(files.findings) as findings_out:
            rules_audit.write_csv(findings_out, audit.findings)
        with ctx.engine.begin() as conn:  # like the discrepancies: rows of this run, counted once it is recorded
            ctx.heartbeat(conn)
            rules_audit.insert(conn, ctx.run_id, audit.findings)
        # The documents show the repairs before they are made: the users whose cache row differs from the
        # ledger in the snapshot. Should the repair change another number (someone set a row meanwhile),
        # the documents are written again inside the transaction, before it commits (`_record`).
        summary = audit.summary(ctx, repaired=audit.repairable if ctx.repair else 0,
                                files={**files.names(), "journal": self.journal.name})
        _record_stats(ctx, summary, files)
        staged.write_text(self.journal, journal_csv(summary.journal))
        _stage_documents(ctx, summary, files, staged)
        staged.seal()
        return summary

    def _record(self, audit: Audit, summary: Summary) -> Summary:
        """One transaction: the repairs, the run's row and its end. Returns the summary recorded."""
        ctx = self.ctx
        with ctx.recording() as conn:
            if ctx.repair:
                repaired = _repair(ctx, conn)
                if repaired != summary.repaired:
                    summary = summary.with_repaired(repaired)
                    _stage_documents(ctx, summary, self.files, self.staged, conn=conn)
                    self.staged.seal()
            _insert_run(ctx, conn, audit.snapshot, summary, self.files)
        return summary


def _publish(ctx: RunContext[RuleSettings], staged: FileSet) -> None:
    """The recorded run's files renamed into place. Should a rename fail (the folder turned read-only),
    the run stays recorded and the files wait aside for the next reconcile to publish them."""
    try:
        staged.publish()
    except CannotWrite as failure:
        ctx.log.error("the run is recorded but its files could not be published; the next reconcile publishes "
                      "them", action="reconcile_publish_failed", error=str(failure))


def _warm_up_reports() -> None:
    """The report libraries imported while the server reads the ledger (this process only waits then)."""
    from jobs.reports import finance

    threading.Thread(target=finance.warm_up, name="reports-warm-up", daemon=True).start()


def _settle_leftovers(ctx: RunContext[RuleSettings], files: ReportFiles) -> None:
    """Only one reconcile runs at a time, so files aside in the directory are what an earlier run left
    when it was killed or failed: those of a recorded run are published, the others removed."""
    settled = settle_leftovers(files.csv.parent, ReportFiles.LEFTOVERS, _run_of,
                               lambda run_ids: runs.succeeded_runs(ctx.engine, ctx.job, run_ids))
    if settled.published:
        ctx.stats["leftovers_published"] = len(settled.published)
        ctx.log.warning("published the files of a recorded run that stopped before publishing them",
                        action="reconcile_leftovers_published", files=settled.published)
    if settled.removed:
        ctx.stats["leftovers_removed"] = len(settled.removed)
        ctx.log.warning("removed files a run that was not recorded left aside", action="reconcile_leftovers",
                        files=settled.removed)


def journal_file(files: ReportFiles) -> Path:
    """The run's journal, beside its CSV: `reconciliation-…-{run}.journal.csv`."""
    return files.csv.with_name(files.csv.stem + ".journal.csv")


_JOURNAL_NAME = re.compile(r"reconciliation-\d{8}T\d{6}Z-(\d+)\.journal\.csv")


def _run_of(name: str) -> int | None:
    """The run whose file `name` is: a report file's (ReportFiles) or a journal's."""
    journal = _JOURNAL_NAME.fullmatch(name)
    return int(journal.group(1)) if journal else ReportFiles.run_of(name)


def _stage_documents(ctx: RunContext[RuleSettings], summary: Summary, files: ReportFiles, staged: FileSet, *,
                     conn: Connection | None = None) -> None:
    """The JSON summary, the HTML report and the workbook, written aside (read on `conn` when given:
    inside the recording transaction, whose lease is renewed by its own commit)."""
    from jobs.reports import finance

    data = summary.as_dict()
    staged.write_text(files.json, summary_json(data))
    with _connection(ctx, conn) as reading:
        document = finance.gather(reading, data, run_status=None)
        _renew_lease(ctx, conn)
        staged.write_text(files.html, finance.render_html(document))
        _renew_lease(ctx, conn)
        with staged.writing(files.xlsx) as aside:
            finance.write_xlsx(reading, document, aside)
    _renew_lease(ctx, conn)


@contextmanager
def _connection(ctx: RunContext[RuleSettings], conn: Connection | None) -> Iterator[Connection]:
    if conn is not None:
        yield conn
        return
    with ctx.engine.connect() as own:
        yield own


def _renew_lease(ctx: RunContext[RuleSettings], conn: Connection | None = None) -> None:
    """A heartbeat in a transaction of its own (none inside the recording transaction: it holds the
    run's row until it commits)."""
    if conn is not None:
        return
    with ctx.engine.begin() as own:
        ctx.heartbeat(own)


def _repair(ctx: RunContext[RuleSettings], conn: Connection) -> int:
    """Set each discrepant user's cache row to the ledger's sums, under a row lock, in the caller's
    transaction (the one that records the run); return how many rows changed. The users are taken in
    batches, in user_id order, their locks held until that transaction ends."""
    repaired, after = 0, str(BEFORE_ALL_IDS)
    while True:
        user_ids = [str(row.user_id) for row in conn.execute(_queries["repair_batch"], {
            "run_id": ctx.run_id, "after": after, "batch_size": ctx.settings.batch_size,
        })]
        if not user_ids:
            break
        repaired += _repair_batch(ctx, conn, user_ids)
        ctx.stats["repaired"] = repaired
        if len(user_ids) < ctx.settings.batch_size:
            break
        after = user_ids[-1]
    ctx.stats["repaired"] = repaired
    return repaired


def _repair_batch(ctx: RunContext[RuleSettings], conn: Connection, user_ids: list[str]) -> int:
    params = {"user_ids": user_ids, "as_of": ctx.as_of}
    created = {row.user_id for row in conn.execute(_queries["create_missing_balances"], params)}
    lock_balances(conn, user_ids)
    updated = {row.user_id for row in conn.execute(_queries["repair_balances"], params)}
    return len(created | updated)


def _record_stats(ctx: RunContext[RuleSettings], summary: Summary, files: ReportFiles | None) -> None:
    ctx.stats.update(
        users_checked=summary.users_checked,
        discrepancies=summary.discrepancies["total"],
        discrepancies_by_kind={k: n for k, n in summary.discrepancies["by_kind"].items() if n},
        net_drift=summary.net_drift,
        outstanding_points=summary.outstanding_points,
        roll_forward_gap=summary.roll_forward.gap,
        late_committed_points=summary.roll_forward.late_committed["points"],
        findings=summary.findings["total"] if summary.findings else 0,
        # exported by the daemon's /metrics as rewards_invariant_violations{kind} (core/metrics.py)
        invariant_violations=summary.findings["by_kind"] if summary.findings else {},
    )
    if files:
        ctx.stats["report"] = str(files.csv)
        ctx.stats["html_report"] = str(files.html)


def _insert_run(ctx: RunContext[RuleSettings], conn: Connection, snapshot: Snapshot, summary: Summary,
                files: ReportFiles) -> None:
    conn.execute(_queries["insert_run"], {
        "run_id": ctx.run_id, "as_of": ctx.as_of,
        "users_checked": summary.users_checked, "ledger_rows": summary.ledger_rows,
        "discrepancies": summary.discrepancies["total"],
        "ledger_balance": snapshot.ledger.balance, "ledger_earned": snapshot.ledger.earned,
        "ledger_spent": snapshot.ledger.spent, "cache_balance": snapshot.cache.balance,
        "cache_earned": snapshot.cache.earned, "cache_spent": snapshot.cache.spent,
        "net_drift": summary.net_drift, "closing_balance": summary.roll_forward.closing,
        "repaired": summary.repaired, "csv_file": str(files.csv), "json_file": str(files.json),
        "summary": summary_json(summary.as_dict()),
    })
