"""reconcile: is the balance cache true to the ledger, and what moved since the last reconcile?

In one REPEATABLE READ READ ONLY snapshot, every user's cache row is compared with the ledger
(`balance` = sum(delta), `total_earned` = sum of positive deltas, `total_spent` = sum of negative
deltas). A user is a discrepancy with one or more kinds: MISSING_BALANCE (ledger rows, no cache row),
ORPHAN_BALANCE (a cache row with a nonzero field and no ledger rows), BALANCE_MISMATCH,
EARNED_MISMATCH, SPENT_MISMATCH (both sides exist and differ), CACHE_INCONSISTENT (cache
`balance <> total_earned + total_spent`), NEGATIVE_BALANCE (ledger balance below zero). App writes
(ledger row and cache together) committed while the run reads are outside its snapshot, so they never
show as a discrepancy.

The ledger is read once in full, grouped by user (reconcile.sql's `discrepancies`, the same shape as
one aggregate query, so it runs in parallel on PostgreSQL and shard by shard on Citus), and the
discrepant users are streamed (COPY, which keeps the parallel plan a cursor would lose) into the CSV,
written aside, and into
`reconciliation_discrepancies` in chunks through another connection, which also renews the lease.
The totals need no second pass: every other user's cache row equals the ledger, so the ledger's
totals are the cache's less the discrepant users' drift. The movements by type and month come from the
rows dated after the previous reconcile's as-of (`movements` over a created_at window; every row on a
first reconcile). The chart's earlier months are that reconcile's, carried on when the rows dated up to
its as-of are still the rows it counted (same count and points: the ledger is append-only); when rows
came late, those months are charted afresh from the ledger. `tests/integration/test_reconcile_totals.py`
holds every figure to a from-scratch recomputation over random ledgers, chains of runs and late rows.

From these, `jobs/reconcile_summary.py` builds the summary and its roll-forward: `opening` (the closing
of the latest successful reconcile for an earlier as-of) + issued by type - spent by type - expired -
clawed back + late-committed = `closing`.

All-or-nothing (SPEC "reconcile"). Every file (the CSV, the findings' CSV, the JSON summary, the HTML
report and the workbook, `jobs/reports/`) is written aside and flushed to disk first, so a full disk or a
read-only folder fails the run before anything is recorded, naming the file. Then ONE transaction
(`RunContext.recording`) commits the repairs (`--repair` or `REWARDS_RECONCILE_REPAIR`: each discrepant
user's cache row set to the ledger's sums, batch by batch under row locks held to the commit, recomputed
inside them), the `reconciliation_runs` row that counts them and the run's end, SUCCEEDED. Only then are
the files renamed into place. A run killed before that commit repaired nothing and recorded nothing;
one killed after it left its files aside, and the next reconcile publishes them (`_settle_leftovers`,
which also removes what runs that were not recorded left). The documents state the repairs before they
are made (the users whose cache row differs from the ledger in the snapshot); should the repair change
another number, they are written again inside the transaction. A dry run computes and reports (stats)
but writes no table, no file, and repairs nothing.
"""
from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from typing import Any, Callable, Iterator, NamedTuple, Sequence, TextIO

from sqlalchemy import Connection, Engine, Row

from core import runs
from core.job import BEFORE_ALL_IDS, Job, RunContext
from core.ledger import lock_balances
from core.reports import CannotWrite, FileSet, settle_leftovers
from core.sql import Queries
from core.stream import copy_rows
from jobs.reconcile_summary import (MONTHS_CHARTED, RECOVERY, CacheTotals, ClawbackTotals, Found, LedgerTotals,
                                    Movement, PreviousReconcile, Snapshot, Summary, TypeTotals, Unrecovered,
                                    add_totals, build_summary, month_starts)
from jobs import rules_audit
from jobs.reports.files import CSV_HEADER, ReportFiles, csv_row, csv_writer, summary_json
from jobs.settings import RuleSettings

_queries = Queries(__file__)

# The audit's full join hashes every user's ledger sums at once: with PostgreSQL's default 4MB it splits
# into batches on disk. Spills to disk beyond it, so memory stays bounded.
AUDIT_WORK_MEM = "256MB"
# The runs that write ledger rows: a reconcile waits for them to finish (bounded).
LEDGER_WRITERS = ("recurring-rewards", "level2-rewards", "expire-points")


def run(ctx: RunContext[RuleSettings]) -> None:
    """Read the snapshot; write every file aside; record the run with its repairs; publish the files.

    All-or-nothing (SPEC): the files appear under their final names only once the run, its
    discrepancies and its repairs are recorded, and a repair commits in the transaction that records
    the run (SUCCEEDED) and the report that counts it. Every file is written and flushed to disk aside
    before that transaction, so a full disk or a read-only folder fails the run before anything is
    recorded; a kill before the commit leaves nothing, one after it leaves files aside that the next
    reconcile publishes.
    """
    ctx.wait_for_jobs(LEDGER_WRITERS, timeout_seconds=ctx.settings.reconcile_wait_seconds)
    if ctx.dry_run:
        with _read_only_snapshot(ctx.engine) as conn:
            snapshot, found, _findings = _audit(ctx, conn, None)
        summary = build_summary(ctx.run_id, ctx.as_of, snapshot, found, repaired=0, repair_requested=ctx.repair,
                                files=None, points_per_usd=ctx.settings.points_per_usd)
        _record_stats(ctx, summary, None)
        _say_done(ctx, summary)
        return
    files = ReportFiles.for_run(ctx.settings.reports_dir, ctx.as_of, ctx.run_id)
    _warm_up_reports()
    _settle_leftovers(ctx, files)
    staged = FileSet()
    try:
        summary = _record(ctx, files, staged)
    except BaseException:
        staged.discard()
        raise
    _publish(ctx, staged)
    _say_done(ctx, summary)


def _record(ctx: RunContext[RuleSettings], files: ReportFiles, staged: FileSet) -> Summary:
    """Everything but the publication: the files written aside and sealed, then in one transaction the
    repairs, the run's row and its end. Returns the summary recorded."""
    with _read_only_snapshot(ctx.engine) as conn, staged.text(files.csv) as csv_out:
        snapshot, found, findings = _audit(ctx, conn, csv_out)
    with staged.text(files.findings) as findings_out:
        rules_audit.write_csv(findings_out, findings)
    with ctx.engine.begin() as conn:  # like the discrepancies: rows of this run, counted once it is recorded
        ctx.heartbeat(conn)
        rules_audit.insert(conn, ctx.run_id, findings)
    # The documents show the repairs before they are made: the users whose cache row differs from the
    # ledger in the snapshot. Should the repair change another number (someone set a row meanwhile),
    # the documents are written again inside the transaction, before it commits.
    repairs_expected = found.repairable if ctx.repair else 0
    summary = build_summary(ctx.run_id, ctx.as_of, snapshot, found, repaired=repairs_expected,
                            repair_requested=ctx.repair, files=files.names(),
                            points_per_usd=ctx.settings.points_per_usd)
    _record_stats(ctx, summary, files)
    _stage_documents(ctx, summary, files, staged)
    staged.seal()
    with ctx.recording() as conn:
        if ctx.repair:
            repaired = _repair(ctx, conn)
            if repaired != repairs_expected:
                summary = summary.with_repaired(repaired)
                _stage_documents(ctx, summary, files, staged, conn=conn)
                staged.seal()
        _insert_run(ctx, conn, snapshot, summary, files)
    return summary


def _publish(ctx: RunContext[RuleSettings], staged: FileSet) -> None:
    """The recorded run's files renamed into place. Should a rename fail (the folder turned read-only),
    the run stays recorded and the files wait aside for the next reconcile to publish them."""
    try:
        staged.publish()
    except CannotWrite as failure:
        ctx.log.error("the run is recorded but its files could not be published; the next reconcile publishes "
                      "them", action="reconcile_publish_failed", error=str(failure))


def _say_done(ctx: RunContext[RuleSettings], summary: Summary) -> None:
    ctx.log.info("reconciliation done", action="reconcile_done", discrepancies=summary.discrepancies["total"],
                 net_drift=summary.net_drift, gap=summary.roll_forward.gap,
                 late_committed=summary.roll_forward.late_committed["points"],
                 repaired=summary.repaired)


def _warm_up_reports() -> None:
    """The report libraries imported while the server reads the ledger (this process only waits then)."""
    from jobs.reports import finance

    threading.Thread(target=finance.warm_up, name="reports-warm-up", daemon=True).start()


def _settle_leftovers(ctx: RunContext[RuleSettings], files: ReportFiles) -> None:
    """Only one reconcile runs at a time, so files aside in the directory are what an earlier run left
    when it was killed or failed: those of a recorded run are published, the others removed."""
    settled = settle_leftovers(files.csv.parent, ReportFiles.LEFTOVERS, ReportFiles.run_of,
                               lambda run_ids: runs.succeeded_runs(ctx.engine, JOB.name, run_ids))
    if settled.published:
        ctx.stats["leftovers_published"] = len(settled.published)
        ctx.log.warning("published the files of a recorded run that stopped before publishing them",
                        action="reconcile_leftovers_published", files=settled.published)
    if settled.removed:
        ctx.stats["leftovers_removed"] = len(settled.removed)
        ctx.log.warning("removed files a run that was not recorded left aside", action="reconcile_leftovers",
                        files=settled.removed)


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


@contextmanager
def _read_only_snapshot(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ READ ONLY transaction: every statement in it sees the same snapshot."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            conn.execute(_queries["one_snapshot_per_node"])
            yield conn


def _audit(ctx: RunContext[RuleSettings], conn: Connection,
           csv_out: TextIO | None) -> tuple[Snapshot, Found, list[rules_audit.Finding]]:
    """The cache's totals, the discrepant users streamed, the movements, then the rules audit: one snapshot."""
    previous = _previous_reconcile(conn, ctx)
    window = {"as_of": ctx.as_of, "previous_as_of": previous.as_of if previous else None}
    months_from = conn.execute(_queries["months_charted_from"], {"as_of": ctx.as_of,
                                                                  "months": MONTHS_CHARTED}).scalar_one()
    starts = month_starts(months_from)
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{AUDIT_WORK_MEM}'")
    cache = _cache_totals(conn)
    found = _stream_discrepancies(ctx, conn, csv_out)
    lines = _movements(conn, window, starts, after=window["previous_as_of"])  # every row on a first reconcile
    ledger = _ledger_totals(cache, found, _rows_up_to(conn, previous), lines)
    counted = previous is not None and previous.counted(ledger.rows_up_to_previous, ledger.dated_up_to_previous)
    carried = previous.monthly if previous is not None and counted else None
    by_type_up_to_previous = None
    if previous and (not counted or previous.ledger_by_type is None):
        # rows came late (or an old summary): the ledger by type up to the previous as-of, read once,
        # gives the late lines by type and charts the months afresh
        earlier = _movements(conn, window, starts, up_to=previous.as_of)
        by_type_up_to_previous = _by_type(earlier)
        if carried is None:
            lines += earlier
    snapshot = Snapshot(previous=previous, ledger=ledger, cache=cache, users_checked=found.users_checked(cache),
                        movements=_charted(lines, starts), months_from=months_from,
                        unrecovered=_unrecovered(conn, window), monthly_carried=carried,
                        ledger_by_type_up_to_previous=by_type_up_to_previous)
    findings = rules_audit.audit(conn, ctx.settings)
    _renew_lease(ctx)
    return replace(snapshot, findings=rules_audit.by_kind(findings)), found, findings


def _line_type(line: Row[Any]) -> str:
    """The roll-forward's line of a movement: its ledger type, recoveries (recover: keys) apart."""
    return RECOVERY if line.recovery else line.type


def _by_type(lines: Sequence[Row[Any]]) -> TypeTotals:
    return add_totals({}, *({_line_type(line): [int(line.rows), int(line.earned), -int(line.spent)]}
                           for line in lines))


def _previous_reconcile(conn: Connection, ctx: RunContext[RuleSettings]) -> PreviousReconcile | None:
    row = conn.execute(_queries["previous_reconcile"], {"as_of": ctx.as_of, "run_id": ctx.run_id}).first()
    if row is None:
        return None
    return PreviousReconcile(row.run_id, row.as_of, int(row.closing_balance), int(row.closing_rows), row.monthly,
                             ledger_by_type=row.ledger_by_type, clawbacks=ClawbackTotals.stored(row.clawbacks))


def _movements(conn: Connection, window: dict[str, datetime | None], starts: list[datetime], *,
               from_: datetime | None = None, after: datetime | None = None,
               up_to: datetime | None = None) -> list[Row[Any]]:
    return list(conn.execute(_queries["movements"], {**window, "month_starts": starts, "from": from_, "after": after,
                                                     "up_to": up_to}))


def _rows_up_to(conn: Connection, previous: PreviousReconcile | None) -> int:
    """The ledger rows dated up to the previous reconcile's as-of (none without one)."""
    if previous is None:
        return 0
    return int(conn.execute(_queries["rows_up_to"], {"up_to": previous.as_of}).scalar_one())


def _unrecovered(conn: Connection, window: dict[str, datetime | None]) -> Unrecovered | None:
    """Clawbacks of the period (None until migration 016's referral_rewards exists)."""
    if not conn.execute(_queries["referral_rewards_exists"]).scalar_one():
        return None
    row = conn.execute(_queries["unrecovered_clawbacks"], window).one()._asdict()
    seen = ClawbackTotals(*(int(row[name]) for name in ClawbackTotals.__dataclass_fields__))
    if window["previous_as_of"] is None:
        return Unrecovered(seen)
    before = ClawbackTotals(*(int(row[f"{name}_before"]) for name in ClawbackTotals.__dataclass_fields__))
    return Unrecovered(seen, before)


def _cache_totals(conn: Connection) -> CacheTotals:
    row = conn.execute(_queries["cache_totals"]).one()
    return CacheTotals(int(row.rows), int(row.balance), int(row.earned), int(row.spent))


def _ledger_totals(cache: CacheTotals, found: Found, rows_up_to_previous: int,
                   lines: list[Row[Any]]) -> LedgerTotals:
    """The ledger's totals: the cache's less the discrepant users' drift; the splits by date from the
    movement lines, which hold every row dated after the previous as-of (all rows without one)."""
    def window(column: str, wanted: Callable[[Row[Any]], bool] = lambda line: True) -> int:
        return sum(int(getattr(line, column)) for line in lines if wanted(line))

    balance = cache.balance - found.drift["balance"]
    after_as_of = window("balance", lambda line: line.after_as_of)
    return LedgerTotals(
        rows=rows_up_to_previous + window("rows"), balance=balance, earned=cache.earned - found.drift["earned"],
        spent=cache.spent - found.drift["spent"], closing=balance - after_as_of,
        rows_after_as_of=window("rows", lambda line: line.after_as_of), points_after_as_of=after_as_of,
        dated_up_to_previous=balance - window("balance"), rows_up_to_previous=rows_up_to_previous)


def _charted(lines: list[Row[Any]], month_starts: list[datetime]) -> list[Movement]:
    """The movements the summary reads: dated at or before the as-of, in the period or the charted
    months (month None: before them)."""
    def month(bucket: int) -> date | None:
        return month_starts[bucket - 1].date() if 1 <= bucket <= MONTHS_CHARTED else None

    return [Movement(_line_type(line), month(line.month), line.in_period, int(line.earned), -int(line.spent),
                     int(line.rows))
            for line in lines
            if not line.after_as_of and (line.in_period or month(line.month) is not None)]


def _renew_lease(ctx: RunContext[RuleSettings], conn: Connection | None = None) -> None:
    """A heartbeat in a transaction of its own (none inside the recording transaction: it holds the
    run's row until it commits)."""
    if conn is not None:
        return
    with ctx.engine.begin() as own:
        ctx.heartbeat(own)


class _Discrepancy(NamedTuple):
    """One row of `discrepancies`, from COPY's text (the fields of CSV_HEADER)."""
    user_id: str
    kinds: tuple[str, ...]
    cached_balance: int | None
    ledger_balance: int
    drift: int
    cached_total_earned: int | None
    ledger_total_earned: int
    cached_total_spent: int | None
    ledger_total_spent: int

    @property
    def cache_true(self) -> bool:
        """The cache row equals the ledger's sums (a repair leaves it as it is)."""
        return (self.cached_balance, self.cached_total_earned, self.cached_total_spent) == (
            self.ledger_balance, self.ledger_total_earned, self.ledger_total_spent)

    @classmethod
    def parsed(cls, values: Sequence[str | None]) -> _Discrepancy:
        (user_id, kinds, cached_balance, ledger_balance, drift, cached_earned, ledger_earned, cached_spent,
         ledger_spent) = values
        return cls(str(user_id), tuple(kinds.split("|")) if kinds else (), _int_or_none(cached_balance),
                   _int(ledger_balance), _int(drift), _int_or_none(cached_earned), _int(ledger_earned),
                   _int_or_none(cached_spent), _int(ledger_spent))


def _int_or_none(text: str | None) -> int | None:
    return None if text is None else int(text)


def _int(text: str | None) -> int:
    """A number `discrepancies` never leaves NULL (the ledger's sums and the drift are coalesced)."""
    assert text is not None
    return int(text)


def _stream_discrepancies(ctx: RunContext[RuleSettings], conn: Connection, csv_out: TextIO | None) -> Found:
    """Stream the discrepant users into the CSV and, chunk by chunk, the table."""
    conn.execute(_queries["group_users_in_index_order"])
    found = Found()
    writer = csv_writer(csv_out) if csv_out else None
    chunk_numbers = itertools.count(1)

    def take(values: list[tuple[str | None, ...]]) -> None:
        chunk = [_Discrepancy.parsed(row) for row in values]
        for row in chunk:
            found.add(row.kinds, balance=row.drift,
                      earned=(row.cached_total_earned or 0) - row.ledger_total_earned,
                      spent=(row.cached_total_spent or 0) - row.ledger_total_spent, cache_true=row.cache_true)
        if writer:
            writer.writerows(csv_row(row) for row in chunk)
        _store_chunk(ctx, chunk)
        ctx.progress(job=ctx.job, batches=next(chunk_numbers), items=found.total, total=None)
        ctx.check_stop()

    copy_rows(conn, _queries["discrepancies"], {}, take, ctx.settings.batch_size)
    conn.execute(_queries["hash_groups_again"])
    _renew_lease(ctx)
    return found


def _store_chunk(ctx: RunContext[RuleSettings], chunk: Sequence[_Discrepancy]) -> None:
    """One short transaction of its own: renew the lease, insert the chunk (not in a dry run)."""
    with ctx.engine.begin() as conn:
        ctx.heartbeat(conn)
        if chunk and not ctx.dry_run:
            conn.execute(_queries["insert_discrepancies"], {
                "run_id": ctx.run_id,
                "user_ids": [str(row.user_id) for row in chunk],
                "kinds": ["|".join(row.kinds) for row in chunk],
                **{column: [getattr(row, column) for row in chunk] for column in CSV_HEADER[2:]},
            })


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


def _insert_run(ctx: RunContext[RuleSettings], conn: Connection, snapshot: Snapshot, summary: Summary, files: ReportFiles) -> None:
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


JOB = Job(
    name="reconcile",
    run=run,
    settings_used=("reports_dir", "batch_size"),
    description="compare the balance cache with the ledger; report (CSV, JSON) and optionally repair",
    stats_labels={
        "discrepancies": "discrepancies", "findings": "rules audit findings", "repaired": "cache rows repaired",
        "net_drift": "points net drift", "roll_forward_gap": "points roll-forward gap",
        "outstanding_points": "points outstanding", "users_checked": "users checked",
        "report": None, "discrepancies_by_kind": None, "invariant_violations": None,
    },
)
