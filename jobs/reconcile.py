"""reconcile: is the balance cache true to the ledger, and what moved since the last reconcile?

In one REPEATABLE READ READ ONLY snapshot, every user's cache row is compared with the ledger
(`balance` = sum(delta), `total_earned` = sum of positive deltas, `total_spent` = sum of negative
deltas). A user is a discrepancy with one or more kinds: MISSING_BALANCE (ledger rows, no cache row),
ORPHAN_BALANCE (a cache row with a nonzero field and no ledger rows), BALANCE_MISMATCH,
EARNED_MISMATCH, SPENT_MISMATCH (both sides exist and differ), CACHE_INCONSISTENT (cache
`balance <> total_earned + total_spent`), NEGATIVE_BALANCE (ledger balance below zero). App writes
(ledger row and cache together) committed while the run reads are outside its snapshot, so they never
show as a discrepancy.

The ledger is read ONCE (reconcile.sql's `audit`: one pass grouped by user and by type and month
at once): the comparison, the totals, the roll-forward's and the monthly chart's movements all come
from that pass. The discrepant users are streamed (server-side cursor) into the CSV, written aside,
and into `reconciliation_discrepancies` in chunks through another connection, which also renews the
lease.
Then `reconciliation_runs` gets one row and the `.json` summary is written beside the CSV, both files
renamed into place whole. The summary's roll-forward: `opening` (the closing of the latest successful
reconcile for an earlier as-of) + issued by type - spent by type - expired = `closing` (ledger balance
as of this as-of), over ledger rows dated in (previous as-of, as-of]; a `gap` is reported when rows
dated before the previous as-of were written after that run.

With repair (`--repair` or `REWARDS_RECONCILE_REPAIR`), the discrepant users' cache rows are then set
to the ledger's sums, batch by batch, under row locks and recomputed inside them. A dry run computes and
reports (stats) but writes no table, no file, and repairs nothing.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO
from uuid import UUID

from sqlalchemy import Connection, Engine

from core.job import Batch, Job, RunContext
from core.ledger import lock_balances
from core.reports import FileSet, remove_leftovers
from core.sql import Queries

_queries = Queries(__file__)
_BEFORE_ALL_IDS = UUID(int=0)

KINDS = ("MISSING_BALANCE", "ORPHAN_BALANCE", "BALANCE_MISMATCH", "EARNED_MISMATCH", "SPENT_MISMATCH",
         "CACHE_INCONSISTENT", "NEGATIVE_BALANCE")
CSV_HEADER = ("user_id", "kinds", "cached_balance", "ledger_balance", "drift", "cached_total_earned",
              "ledger_total_earned", "cached_total_spent", "ledger_total_spent")
EXPIRY = "EXPIRY"
CLAWBACK = "REFERRAL_CLAWBACK"
NOT_SPENDING = (EXPIRY, CLAWBACK)  # debits that finance reads on lines of their own, never as spending
MONTHS_CHARTED = 12
# The audit's one pass hashes every user at once: with PostgreSQL's default 4MB it would sort instead
# (several times slower, bench/RESULTS.md). Spills to disk beyond it, so memory stays bounded.
AUDIT_WORK_MEM = "256MB"


# ── the job ──────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path
    html: Path
    xlsx: Path

    @classmethod
    def for_run(cls, reports_dir: Path, as_of: datetime, run_id: int) -> ReportFiles:
        stem = f"reconciliation-{as_of.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}"
        directory = reports_dir.resolve()
        return cls(*(directory / f"{stem}.{suffix}" for suffix in ("csv", "json", "html", "xlsx")))

    def names(self) -> dict[str, str]:
        return {"csv": self.csv.name, "json": self.json.name, "html": self.html.name, "xlsx": self.xlsx.name}


@dataclass
class Snapshot:
    """The totals read in the run's snapshot (the discrepant rows are streamed separately)."""

    previous: Any | None
    ledger: Any
    cache: Any
    users_checked: int
    movements: list[Any]
    months_from: datetime
    unrecovered: Any | None


def run(ctx: RunContext) -> None:
    """Read the snapshot; write every file aside; record the run; publish the files; then repair.

    All-or-nothing (SPEC): the files appear under their final names together and only once the run
    and its discrepancies are recorded; a repair is committed only after that, and the files are then
    published again with the count of repairs.
    """
    ctx.wait_for_jobs(("recurring-rewards", "level2-rewards", "expire-points"),
                      timeout_seconds=ctx.settings.reconcile_wait_seconds)
    files = None if ctx.dry_run else ReportFiles.for_run(ctx.settings.reports_dir, ctx.as_of, ctx.run_id)
    staged = FileSet()
    try:
        if files:
            _clean_leftovers(ctx, files)
        with _read_only_snapshot(ctx.engine) as conn:
            if files:
                with staged.text(files.csv) as csv_out:
                    snapshot, found = _audit(ctx, conn, csv_out)
            else:
                snapshot, found = _audit(ctx, conn, None)
        summary = build_summary(ctx.run_id, ctx.as_of, snapshot, found, repaired=0,
                                repair_requested=ctx.repair, files=files,
                                points_per_usd=ctx.settings.points_per_usd)
        _record_stats(ctx, summary, files)
        if files:
            _stage_documents(ctx, summary, files, staged)
            _insert_run(ctx, snapshot, summary, files)
            staged.publish()
    finally:
        staged.discard()
    if ctx.repair and files:
        summary["repaired"] = _repair(ctx)
        _record_repairs(ctx, summary, files)
    ctx.log.info("reconciliation done", action="reconcile_done", discrepancies=summary["discrepancies"]["total"],
                 net_drift=summary["net_drift"], gap=summary["roll_forward"]["gap"],
                 late_committed=summary["roll_forward"]["late_committed"]["points"],
                 repaired=summary["repaired"])


def _clean_leftovers(ctx: RunContext, files: ReportFiles) -> None:
    """Only one reconcile runs at a time, so files aside in the directory are a killed run's leftovers."""
    removed = remove_leftovers(files.csv.parent, ".reconciliation-*.part")
    if removed:
        ctx.stats["leftovers_removed"] = len(removed)
        ctx.log.warning("removed files a killed run left aside", action="reconcile_leftovers", files=removed)


def _stage_documents(ctx: RunContext, summary: dict[str, Any], files: ReportFiles, staged: FileSet) -> None:
    """The JSON summary, the HTML report and the workbook, written aside."""
    from jobs import finance_report

    staged.write_text(files.json, summary_json(summary))
    with ctx.engine.connect() as conn:
        document = finance_report.gather(conn, summary, run_status=None)
        _renew_lease(ctx)
        staged.write_text(files.html, finance_report.render_html(document))
        _renew_lease(ctx)
        finance_report.write_xlsx(conn, document, staged.path_for(files.xlsx))
    _renew_lease(ctx)


def _record_repairs(ctx: RunContext, summary: dict[str, Any], files: ReportFiles) -> None:
    """The count of repairs into the run's row, its files published again with it."""
    staged = FileSet()
    try:
        _stage_documents(ctx, summary, files, staged)
        with ctx.engine.begin() as conn:
            ctx.heartbeat(conn)
            conn.execute(_queries["record_repairs"], {"run_id": ctx.run_id, "repaired": summary["repaired"],
                                                      "summary": summary_json(summary)})
        staged.publish()
    finally:
        staged.discard()


@contextmanager
def _read_only_snapshot(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ READ ONLY transaction: every statement in it sees the same snapshot."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            conn.execute(_queries["one_snapshot_per_node"])
            yield conn


def _audit(ctx: RunContext, conn: Connection, csv_out: TextIO | None) -> tuple[Snapshot, Found]:
    """The one pass over the ledger: totals, movements, then the discrepant users, streamed."""
    previous = conn.execute(_queries["previous_reconcile"], {"as_of": ctx.as_of, "run_id": ctx.run_id}).first()
    window = {"as_of": ctx.as_of, "previous_as_of": previous.as_of if previous else None}
    months_from = conn.execute(_queries["months_charted_from"], {"as_of": ctx.as_of,
                                                                  "months": MONTHS_CHARTED}).scalar_one()
    month_starts = _month_starts(months_from)
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{AUDIT_WORK_MEM}'")
    conn.exec_driver_sql("SET LOCAL jit = off")  # compiling the pass costs more than it saves (RESULTS.md)
    chunk_size = ctx.settings.batch_size
    rows = conn.execute(_queries["audit"], {**window, "month_starts": month_starts},
                        execution_options=_streamed(chunk_size))
    totals, lines, first_discrepancies = _totals_and_lines(rows)
    _renew_lease(ctx)  # the pass ends before its first row arrives
    found = _stream_discrepancies(ctx, rows, first_discrepancies, csv_out)
    unrecovered = None
    if conn.execute(_queries["referral_rewards_exists"]).scalar_one():
        unrecovered = conn.execute(_queries["unrecovered_clawbacks"], window).one()
    snapshot = Snapshot(previous=previous, ledger=_ledger_totals(lines), cache=_cache_totals(totals),
                        users_checked=int(totals.users_checked),
                        movements=_charted(lines, month_starts),
                        months_from=months_from, unrecovered=unrecovered)
    return snapshot, found


def _totals_and_lines(rows: Any) -> tuple[Any, list[Any], list[Any]]:
    """Section 0 (one row) and section 1 of the audit, and the first discrepant rows read with them."""
    totals, lines, discrepancies = None, [], []
    for row in rows:
        if row.section == 0:
            totals = row
        elif row.section == 1:
            lines.append(row)
        else:
            discrepancies.append(row)
            break
    return totals, lines, discrepancies


@dataclass(frozen=True)
class LedgerTotals:
    rows: int
    balance: int
    earned: int
    spent: int
    closing: int
    rows_after_as_of: int
    points_after_as_of: int
    dated_up_to_previous: int
    rows_up_to_previous: int


def _ledger_totals(lines: list[Any]) -> LedgerTotals:
    """The ledger's totals, added up from its movement lines (every row is in exactly one)."""
    def total(column: str, wanted: Any = lambda line: True) -> int:
        return sum(int(getattr(line, column)) for line in lines if wanted(line))

    return LedgerTotals(
        rows=total("rows"), balance=total("balance"), earned=total("earned"), spent=total("spent"),
        closing=total("balance", lambda line: not line.after_as_of),
        rows_after_as_of=total("rows", lambda line: line.after_as_of),
        points_after_as_of=total("balance", lambda line: line.after_as_of),
        dated_up_to_previous=total("balance", lambda line: not line.in_period),
        rows_up_to_previous=total("rows", lambda line: not line.in_period))


@dataclass(frozen=True)
class CacheTotals:
    rows: int
    balance: int
    earned: int
    spent: int


def _cache_totals(totals: Any) -> CacheTotals:
    return CacheTotals(int(totals.cache_rows), int(totals.cache_balance), int(totals.cache_earned),
                       int(totals.cache_spent))


@dataclass(frozen=True)
class Movement:
    type: str
    month: Any
    in_period: bool
    issued: int
    debited: int


def _month_starts(months_from: datetime) -> list[datetime]:
    """The first instants of the charted months and of the month after them (UTC)."""
    starts = []
    for number in range(MONTHS_CHARTED + 1):
        year, month = divmod(months_from.month - 1 + number, 12)
        starts.append(months_from.replace(year=months_from.year + year, month=month + 1))
    return starts


def _charted(lines: list[Any], month_starts: list[datetime]) -> list[Movement]:
    """The movements the summary reads: dated at or before the as-of, in the period or the charted
    months (month None: before them)."""
    def month(bucket: int) -> Any:
        return month_starts[bucket - 1].date() if 1 <= bucket <= MONTHS_CHARTED else None

    return [Movement(line.type, month(line.month), line.in_period, int(line.earned), -int(line.spent))
            for line in lines
            if not line.after_as_of and (line.in_period or month(line.month) is not None)]


def _renew_lease(ctx: RunContext) -> None:
    with ctx.engine.begin() as conn:
        ctx.heartbeat(conn)


@dataclass
class Found:
    """What the stream of discrepant users added up to."""

    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, kinds: Sequence[str]) -> None:
        self.total += 1
        self.by_kind.update(kinds)


def _stream_discrepancies(ctx: RunContext, rows: Any, first: list[Any], csv_out: TextIO | None) -> Found:
    """Stream the discrepant users (the audit's last section) into the CSV and, chunk by chunk, the table."""
    found = Found()
    writer = csv.writer(csv_out, lineterminator="\n") if csv_out else None
    if writer:
        writer.writerow(CSV_HEADER)
    chunk_size = ctx.settings.batch_size
    for chunk_number, chunk in enumerate(_chunks(first, rows, chunk_size), start=1):
        for row in chunk:
            found.add(row.kinds)
        if writer:
            writer.writerows(csv_row(row) for row in chunk)
        _store_chunk(ctx, chunk)
        ctx.progress(job=ctx.job, batches=chunk_number, items=found.total, total=None)
        ctx.check_stop()
    _renew_lease(ctx)
    return found


def _chunks(first: list[Any], rows: Any, size: int) -> Iterator[list[Any]]:
    chunk = list(first)
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _streamed(chunk_size: int) -> dict[str, Any]:
    """A server-side cursor that fetches `chunk_size` rows at a time: memory stays flat."""
    return {"stream_results": True, "max_row_buffer": chunk_size}


def _store_chunk(ctx: RunContext, chunk: Sequence[Any]) -> None:
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


def _repair(ctx: RunContext) -> int:
    """Set each discrepant user's cache row to the ledger's sums, under a row lock; return how many changed."""
    ctx.stats["repaired"] = 0

    def repair_batch(conn: Connection, after: Any) -> Batch:
        user_ids = [str(row.user_id) for row in conn.execute(_queries["repair_batch"], {
            "run_id": ctx.run_id, "after": after or _BEFORE_ALL_IDS, "batch_size": ctx.settings.batch_size,
        })]
        if not user_ids:
            return Batch(next_after=None)
        params = {"user_ids": user_ids, "as_of": ctx.as_of}
        created = {row.user_id for row in conn.execute(_queries["create_missing_balances"], params)}
        lock_balances(conn, user_ids)
        updated = {row.user_id for row in conn.execute(_queries["repair_balances"], params)}
        ctx.count("repaired", len(created | updated))
        done = len(user_ids) < ctx.settings.batch_size
        return Batch(next_after=None if done else user_ids[-1], items=len(user_ids))

    ctx.batches(repair_batch)
    return int(ctx.stats["repaired"])


def _record_stats(ctx: RunContext, summary: dict[str, Any], files: ReportFiles | None) -> None:
    roll = summary["roll_forward"]
    ctx.stats.update(
        users_checked=summary["users_checked"],
        discrepancies=summary["discrepancies"]["total"],
        discrepancies_by_kind={k: n for k, n in summary["discrepancies"]["by_kind"].items() if n},
        net_drift=summary["net_drift"],
        outstanding_points=summary["outstanding_points"],
        roll_forward_gap=roll["gap"],
        late_committed_points=roll["late_committed"]["points"],
    )
    if files:
        ctx.stats["report"] = str(files.csv)
        ctx.stats["html_report"] = str(files.html)


def _insert_run(ctx: RunContext, snapshot: Snapshot, summary: dict[str, Any], files: ReportFiles) -> None:
    with ctx.engine.begin() as conn:
        ctx.heartbeat(conn)
        conn.execute(_queries["insert_run"], {
            "run_id": ctx.run_id, "as_of": ctx.as_of,
            "users_checked": summary["users_checked"], "ledger_rows": summary["ledger_rows"],
            "discrepancies": summary["discrepancies"]["total"],
            "ledger_balance": snapshot.ledger.balance, "ledger_earned": snapshot.ledger.earned,
            "ledger_spent": snapshot.ledger.spent, "cache_balance": snapshot.cache.balance,
            "cache_earned": snapshot.cache.earned, "cache_spent": snapshot.cache.spent,
            "net_drift": summary["net_drift"], "closing_balance": summary["roll_forward"]["closing"],
            "repaired": summary["repaired"], "csv_file": str(files.csv), "json_file": str(files.json),
            "summary": summary_json(summary),
        })


# ── the summary ──────────────────────────────────────────────────────────────
# Its keys are in reading order as built here: migration 018 keeps the summary as `json` (the text as
# written), so the file, the table and `report --format json` show them in this order.

def build_summary(run_id: int, as_of: datetime, snapshot: Snapshot, found: Found, *, repaired: int,
                  repair_requested: bool, files: ReportFiles | None,
                  points_per_usd: Decimal = Decimal(100)) -> dict[str, Any]:
    """The JSON summary finance reads: the liability, discrepancies by kind, the roll-forward."""
    ledger, cache = snapshot.ledger, snapshot.cache
    by_kind = found.by_kind
    roll = roll_forward(snapshot)
    return {
        "report": "points reconciliation",
        "run_id": run_id,
        "as_of": _iso(as_of),
        "verdict": _verdict(found.total, roll),
        "outstanding_points": int(ledger.closing),
        "outstanding_money": money(int(ledger.closing), points_per_usd),
        "users_checked": snapshot.users_checked,
        "ledger_rows": int(ledger.rows),
        "discrepancies": {"total": found.total, "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS}},
        # the cache's columns total_earned / total_spent are all credits / all debits (expiries and
        # clawbacks included), so the summary names them for what they hold
        "ledger": {"balance": int(ledger.balance), "total_credits": int(ledger.earned),
                   "total_debits": int(ledger.spent)},
        "cache": {"balance": int(cache.balance), "total_credits": int(cache.earned),
                  "total_debits": int(cache.spent), "rows": int(cache.rows)},
        "net_drift": int(cache.balance) - int(ledger.balance),
        "repair_requested": repair_requested,
        "repaired": repaired,
        "roll_forward": roll,
        "unrecovered_clawbacks": _unrecovered(snapshot.unrecovered),
        "monthly": monthly_movements(snapshot),
        "after_as_of": {"rows": int(ledger.rows_after_as_of), "points": int(ledger.points_after_as_of)},
        "files": files.names() if files else None,
    }


def money(points: int, points_per_usd: Decimal) -> dict[str, str] | None:
    """Points in US dollars (`points / REWARDS_POINTS_PER_USD`, to the cent); None when points have no price."""
    if not points_per_usd:
        return None
    usd = (Decimal(points) / Decimal(points_per_usd)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return {"usd": str(usd), "points_per_usd": str(points_per_usd)}


def _verdict(discrepancies: int, roll: dict[str, Any]) -> str:
    problems = ([f"{discrepancies} discrepanc{'y' if discrepancies == 1 else 'ies'}"] if discrepancies else [])
    problems += ["roll-forward gap"] if not roll["identity_holds"] else []
    return "CLEAN" if not problems else "ATTENTION: " + " and ".join(problems)


def _unrecovered(row: Any | None) -> dict[str, int] | None:
    """Unrecovered clawbacks of the period (None until migration 016's referral_rewards exists)."""
    if row is None:
        return None
    return {"clawbacks": int(row.clawbacks), "clawed_back_points": int(row.clawed_back_points),
            "rewards_unrecovered": int(row.rewards_unrecovered), "unrecovered_points": int(row.unrecovered_points)}


def roll_forward(snapshot: Snapshot) -> dict[str, Any]:
    """opening + issued - spent - expired - clawed back + late-committed = closing.

    The period is (previous as-of, as-of]; movements count rows by `created_at` in it. Late-committed
    rows are those dated on or before the previous as-of that the previous run did not see (the app
    dates a row at its transaction's start, so a write in flight at that run lands here): since the
    ledger is append-only, they are exactly the rows and points by which the ledger dated up to the
    previous as-of now exceeds that run's closing. Anything else (fewer rows than that run saw, or the
    same rows with other points) is a gap, reported with its explanation.
    """
    previous = snapshot.previous
    opening = int(previous.closing_balance) if previous else 0
    issued = {m.type: int(m.issued) for m in _in_period(snapshot, lambda m: m.issued)}
    spent = {m.type: int(m.debited) for m in _in_period(snapshot, lambda m: m.debited and m.type not in NOT_SPENDING)}
    expired = sum(int(m.debited) for m in _in_period(snapshot, lambda m: m.type == EXPIRY))
    clawed_back = sum(int(m.debited) for m in _in_period(snapshot, lambda m: m.type == CLAWBACK))
    late_rows, late_points = _late_committed(snapshot)
    expected = opening + sum(issued.values()) - sum(spent.values()) - expired - clawed_back + late_points
    closing = int(snapshot.ledger.closing)
    gap = closing - expected
    return {
        "previous_run_id": previous.run_id if previous else None,
        "period_after": _iso(previous.as_of) if previous else None,
        "opening": opening,
        "issued": issued,
        "issued_total": sum(issued.values()),
        "spent": spent,
        "spent_total": sum(spent.values()),
        "expired": expired,
        "clawed_back": clawed_back,
        "late_committed": {"rows": late_rows, "points": late_points},
        "expected_closing": expected,
        "closing": closing,
        "closing_rows": int(snapshot.ledger.rows) - int(snapshot.ledger.rows_after_as_of),
        "identity": "opening + issued - spent - expired - clawed_back + late_committed = closing",
        "identity_holds": gap == 0,
        "gap": gap,
        "gap_explanation": _explain_gap(gap, previous, snapshot),
    }


def _in_period(snapshot: Snapshot, wanted: Any) -> list[Any]:
    return sorted((m for m in _merged_period_movements(snapshot) if wanted(m)), key=lambda m: m.type)


@dataclass(frozen=True)
class _Movement:
    type: str
    issued: int
    debited: int


def _merged_period_movements(snapshot: Snapshot) -> list[_Movement]:
    """The period's movements by type (the statement splits them by calendar month too)."""
    issued: Counter[str] = Counter()
    debited: Counter[str] = Counter()
    for m in snapshot.movements:
        if m.in_period:
            issued[m.type] += int(m.issued)
            debited[m.type] += int(m.debited)
    return [_Movement(kind, issued[kind], debited[kind]) for kind in sorted(set(issued) | set(debited))]


def _late_committed(snapshot: Snapshot) -> tuple[int, int]:
    previous, ledger = snapshot.previous, snapshot.ledger
    if previous is None:
        return 0, 0
    rows = int(ledger.rows_up_to_previous) - int(previous.closing_rows)
    points = int(ledger.dated_up_to_previous) - int(previous.closing_balance)
    if rows <= 0:  # nothing was added: a difference in points is no late write but a gap
        return 0, 0
    return rows, points


def _explain_gap(gap: int, previous: Any | None, snapshot: Snapshot) -> str | None:
    if gap == 0:
        return None
    if previous is None:  # cannot happen in one snapshot; said plainly should it ever
        return f"{gap:+,} points: the ledger's closing and its movements disagree"
    rows_now = int(snapshot.ledger.rows_up_to_previous)
    return (f"{gap:+,} points: the ledger rows dated on or before the previous reconcile's as-of "
            f"({_iso(previous.as_of)}, run {previous.run_id}) no longer add up to its closing "
            f"{int(previous.closing_balance):,} ({int(previous.closing_rows):,} rows then, {rows_now:,} now): rows "
            "were removed or changed although the ledger is append-only (TRUNCATE, a disabled trigger, "
            "a restore); investigate before the close")


def monthly_movements(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Issued / spent / expired / clawed back per calendar month, the last 12 months up to the as-of."""
    months: dict[str, dict[str, Any]] = {}
    first = snapshot.months_from
    for number in range(MONTHS_CHARTED):
        year, month = divmod(first.month - 1 + number, 12)
        label = f"{first.year + year:04d}-{month + 1:02d}"
        months[label] = {"month": label, "issued": 0, "spent": 0, "expired": 0, "clawed_back": 0}
    for m in snapshot.movements:
        label = f"{m.month:%Y-%m}" if m.month is not None else None
        if label not in months:
            continue  # a row of the period dated before the charted months
        line = months[label]
        line["issued"] += int(m.issued)
        debit_line = {EXPIRY: "expired", CLAWBACK: "clawed_back"}.get(m.type, "spent")
        line[debit_line] += int(m.debited)
    return list(months.values())


def summary_json(summary: dict[str, Any]) -> str:
    """The `.json` file's text; `report --format json` prints the same."""
    return json.dumps(summary, indent=2) + "\n"


def csv_row(row: Any) -> list[str]:
    """One discrepancy as CSV cells: kinds joined by `|`, an absent cache value left empty."""
    values = [getattr(row, column) for column in CSV_HEADER[2:]]
    return [str(row.user_id), "|".join(row.kinds), *("" if value is None else str(value) for value in values)]


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


# ── reading a report back (`python scheduler.py report`) ────────────────────

class NotAReport(Exception):
    """The run exists but stores no reconciliation report (another job, or a dry run); says which."""


FORMATS = ("table", "csv", "json", "html", "xlsx")


def render_report(engine: Engine, run_id: int | None, fmt: str, *, xlsx_path: Path | None = None) -> str | None:
    """A stored report as `table`, `csv` (the CSV file's text), `json` (the summary file's text) or
    `html`; `xlsx` is written to `xlsx_path` (returns its path). None when there is no such run or report;
    `NotAReport` when the run is of another job or a dry run. `run_id` None means the latest."""
    from jobs import finance_report

    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(FORMATS)}")
    with engine.connect() as conn:
        stored = conn.execute(_queries["report_run"], {"run_id": run_id}).first()
        if stored is None:
            if run_id is not None:
                _say_what_run_it_is(conn, run_id)
            return None
        if fmt == "json":
            return summary_json(stored.summary)
        if fmt in ("html", "xlsx"):
            document = finance_report.gather(conn, stored.summary, run_status=stored.status)
            if fmt == "html":
                return finance_report.render_html(document)
            assert xlsx_path is not None
            finance_report.write_xlsx(conn, document, xlsx_path)
            return str(xlsx_path)
        rows = conn.execute(_queries["report_discrepancies"], {"run_id": stored.run_id},
                            execution_options=_streamed(1000))
        if fmt == "csv":
            return _csv_text(rows)
        return _table_text(stored, rows)


def _say_what_run_it_is(conn: Connection, run_id: int) -> None:
    run = conn.execute(_queries["job_run"], {"run_id": run_id}).first()
    if run is None:
        return
    if run.job != JOB.name:
        raise NotAReport(f"run {run_id} is a {run.job} run ({run.status}), not a reconcile: it has no report; "
                         f"see `show {run_id}`")
    if run.dry_run:
        raise NotAReport(f"run {run_id} is a dry run of reconcile ({run.status}): a dry run stores no report; "
                         f"its stats are in `show {run_id}`")
    raise NotAReport(f"run {run_id} is a reconcile that recorded no report ({run.status}"
                     + (f": {run.error}" if run.error else "") + ")")


def _csv_text(rows: Iterable[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(csv_row(row) for row in rows)
    return out.getvalue()


_TABLE_ROWS_SHOWN = 50


def _table_text(stored: Any, rows: Iterable[Any]) -> str:
    summary = stored.summary
    lines = [f"Points reconciliation: run {stored.run_id} ({stored.status}), as of {_when(summary['as_of'])}",
             f"Status: {summary.get('verdict', '')}", ""]
    lines += _headline_lines(summary) + [""] + _roll_forward_lines(summary["roll_forward"]) + [""]
    lines += _unrecovered_lines(summary) + _discrepancy_lines(summary, rows)
    if stored.csv_file:
        files = [stored.csv_file, stored.json_file]
        names = summary.get("files") or {}
        files += [str(Path(stored.csv_file).with_name(names[kind])) for kind in ("html", "xlsx") if names.get(kind)]
        lines += ["", "Files: " + files[0], *("       " + name for name in files[1:])]
    return "\n".join(lines) + "\n"


def _headline_lines(summary: dict[str, Any]) -> list[str]:
    from jobs.finance_report import usd

    ledger, cache = summary["ledger"], summary["cache"]
    money = summary.get("outstanding_money")
    lines = [
        f"Outstanding liability (ledger balance as of the as-of instant): {summary['outstanding_points']:,} points"
        + (f" = {usd(money['usd'])} at {money['points_per_usd']} points per US$" if money else ""),
        f"Users checked: {summary['users_checked']:,}   ledger rows: {summary['ledger_rows']:,}",
        "",
    ]
    fields = [("balance", "balance", "balance"), ("total credits", "total_credits", "total_earned"),
              ("total debits", "total_debits", "total_spent")]
    table = [[label, f"{ledger.get(key, ledger.get(old)):,}", f"{cache.get(key, cache.get(old)):,}",
              f"{cache.get(key, cache.get(old)) - ledger.get(key, ledger.get(old)):+,}"]
             for label, key, old in fields]
    lines += _aligned(["", "ledger", "cache", "drift"], table, right=(1, 2, 3))
    after = summary["after_as_of"]
    if after["rows"]:
        lines.append(f"(ledger and cache include {after['rows']:,} rows, {after['points']:+,} points, "
                     "dated after the as-of instant)")
    return lines


def _roll_forward_lines(roll: dict[str, Any]) -> list[str]:
    from jobs.finance_report import roll_forward_lines

    since = (f"since run {roll['previous_run_id']} as of {_when(roll['period_after'])}"
             if roll["previous_run_id"] else "since the beginning of the ledger")
    table = [[line.label, f"{line.value:,}" if line.role in ("opening", "expected", "closing") else f"{line.value:+,}",
              line.note] for line in roll_forward_lines(roll)]
    verdict = ("identity holds: " + roll.get("identity", "") if roll["identity_holds"]
               else f"IDENTITY GAP {roll['gap']:+,}: {roll['gap_explanation']}")
    return [f"Roll-forward {since} (points)", *("  " + line for line in _aligned(None, table, right=(1,))),
            "  " + verdict]


def _unrecovered_lines(summary: dict[str, Any]) -> list[str]:
    unrecovered = summary.get("unrecovered_clawbacks")
    if not unrecovered:
        return []
    return [f"Clawbacks of the period: {unrecovered['clawbacks']:,} ({unrecovered['clawed_back_points']:,} points "
            f"clawed back); unrecovered: {unrecovered['unrecovered_points']:,} points on "
            f"{unrecovered['rewards_unrecovered']:,} rewards", ""]


def _discrepancy_lines(summary: dict[str, Any], rows: Iterable[Any]) -> list[str]:
    found = summary["discrepancies"]
    kinds = ", ".join(f"{kind} {found['by_kind'][kind]}" for kind in KINDS if found["by_kind"].get(kind))
    repaired = f"; repaired {summary['repaired']}" if summary["repair_requested"] else ""
    lines = [f"Discrepancies: {found['total']:,}" + (f" ({kinds})" if kinds else "") + repaired]
    if not found["total"]:
        return lines
    shown = []
    for number, row in enumerate(rows):
        if number == _TABLE_ROWS_SHOWN:
            break
        shown.append(csv_row(row))
    header = ["user_id", "kinds", "cached", "ledger", "drift", "cached earned", "ledger earned",
              "cached spent", "ledger spent"]
    lines += _aligned(header, shown, right=tuple(range(2, 9)))
    if found["total"] > len(shown):
        lines.append(f"… and {found['total'] - len(shown):,} more: report {summary['run_id']} --format csv")
    return lines


def _aligned(header: list[str] | None, rows: list[list[str]], *, right: tuple[int, ...] = ()) -> list[str]:
    everything = ([header] if header else []) + rows
    widths = [max(len(cell) for cell in column) for column in zip(*everything)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) if index in right else cell.ljust(width)
                         for index, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * width for width in widths)] if header else []
    return out + [line(row) for row in rows]


def _when(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


JOB = Job(
    name="reconcile",
    run=run,
    settings_used=("reports_dir", "batch_size"),
    description="compare the balance cache with the ledger; report (CSV, JSON) and optionally repair",
)
