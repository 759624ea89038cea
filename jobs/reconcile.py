"""reconcile: is the balance cache true to the ledger, and what moved since the last reconcile?

In one REPEATABLE READ READ ONLY snapshot, every user's cache row is compared with the ledger
(`balance` = sum(delta), `total_earned` = sum of positive deltas, `total_spent` = sum of negative
deltas). A user is a discrepancy with one or more kinds: MISSING_BALANCE (ledger rows, no cache row),
ORPHAN_BALANCE (a cache row with a nonzero field and no ledger rows), BALANCE_MISMATCH,
EARNED_MISMATCH, SPENT_MISMATCH (both sides exist and differ), CACHE_INCONSISTENT (cache
`balance <> total_earned + total_spent`), NEGATIVE_BALANCE (ledger balance below zero). App writes
(ledger row and cache together) committed while the run reads are outside its snapshot, so they never
show as a discrepancy.

The discrepant users are streamed (server-side cursor) into the CSV, written aside, and into
`reconciliation_discrepancies` in chunks through another connection, which also renews the lease.
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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, TextIO
from uuid import UUID

from sqlalchemy import Connection, Engine

from core.job import Batch, Job, RunContext
from core.reports import atomic_text_file, write_text_atomically
from core.sql import Queries

_queries = Queries(__file__)
_BEFORE_ALL_IDS = UUID(int=0)

KINDS = ("MISSING_BALANCE", "ORPHAN_BALANCE", "BALANCE_MISMATCH", "EARNED_MISMATCH", "SPENT_MISMATCH",
         "CACHE_INCONSISTENT", "NEGATIVE_BALANCE")
CSV_HEADER = ("user_id", "kinds", "cached_balance", "ledger_balance", "drift", "cached_total_earned",
              "ledger_total_earned", "cached_total_spent", "ledger_total_spent")
EXPIRY = "EXPIRY"


# ── the job ──────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    json: Path

    @classmethod
    def for_run(cls, reports_dir: Path, as_of: datetime, run_id: int) -> ReportFiles:
        stem = f"reconciliation-{as_of.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{run_id}"
        directory = reports_dir.resolve()
        return cls(csv=directory / f"{stem}.csv", json=directory / f"{stem}.json")


@dataclass
class Snapshot:
    """The totals read in the run's snapshot (the discrepant rows are streamed separately)."""

    previous: Any | None
    ledger: Any
    cache: Any
    users_checked: int
    movements: list[Any]


def run(ctx: RunContext) -> None:
    ctx.wait_for_jobs(("recurring-rewards", "level2-rewards", "expire-points"),
                      timeout_seconds=ctx.settings.reconcile_wait_seconds)
    files = None if ctx.dry_run else ReportFiles.for_run(ctx.settings.reports_dir, ctx.as_of, ctx.run_id)
    with _read_only_snapshot(ctx.engine) as conn:
        snapshot = _read_totals(ctx, conn)
        sink = atomic_text_file(files.csv) if files else nullcontext(None)
        with sink as csv_out:
            found = _stream_discrepancies(ctx, conn, csv_out)
    repaired = _repair(ctx) if ctx.repair and not ctx.dry_run else 0
    summary = build_summary(ctx.run_id, ctx.as_of, snapshot, found, repaired=repaired,
                            repair_requested=ctx.repair, files=files)
    _record_stats(ctx, summary, files)
    if files:
        write_text_atomically(files.json, summary_json(summary))
        _insert_run(ctx, snapshot, summary, files)
    ctx.log.info("reconciliation done", action="reconcile_done", discrepancies=summary["discrepancies"]["total"],
                 net_drift=summary["net_drift"], gap=summary["roll_forward"]["gap"], repaired=repaired)


@contextmanager
def _read_only_snapshot(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ READ ONLY transaction: every statement in it sees the same snapshot."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn


def _read_totals(ctx: RunContext, conn: Connection) -> Snapshot:
    """The totals, each statement a pass over a table; the lease is renewed between them."""
    previous = conn.execute(_queries["previous_reconcile"], {"as_of": ctx.as_of, "run_id": ctx.run_id}).first()
    window = {"as_of": ctx.as_of, "previous_as_of": previous.as_of if previous else None}
    ledger = conn.execute(_queries["ledger_totals"], window).one()
    _renew_lease(ctx)
    cache = conn.execute(_queries["cache_totals"]).one()
    users_checked = int(conn.execute(_queries["users_checked"]).scalar_one())
    _renew_lease(ctx)
    movements = list(conn.execute(_queries["movements"], window))
    return Snapshot(previous=previous, ledger=ledger, cache=cache, users_checked=users_checked,
                    movements=movements)


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


def _stream_discrepancies(ctx: RunContext, conn: Connection, csv_out: TextIO | None) -> Found:
    """Stream the discrepant users from the snapshot into the CSV and, chunk by chunk, the table."""
    found = Found()
    writer = csv.writer(csv_out, lineterminator="\n") if csv_out else None
    if writer:
        writer.writerow(CSV_HEADER)
    chunk_size = ctx.settings.batch_size
    rows = conn.execute(_queries["discrepancies"], execution_options=_streamed(chunk_size))
    for chunk_number, chunk in enumerate(rows.partitions(chunk_size), start=1):
        for row in chunk:
            found.add(row.kinds)
        if writer:
            writer.writerows(csv_row(row) for row in chunk)
        _store_chunk(ctx, chunk)
        ctx.progress(job=ctx.job, batches=chunk_number, items=found.total, total=None)
        ctx.check_stop()
    _renew_lease(ctx)  # the comparison may have run long before (or after) its last chunk
    return found


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
        conn.execute(_queries["lock_balances"], params)
        updated = {row.user_id for row in conn.execute(_queries["repair_balances"], params)}
        ctx.count("repaired", len(created | updated))
        done = len(user_ids) < ctx.settings.batch_size
        return Batch(next_after=None if done else user_ids[-1], items=len(user_ids))

    ctx.batches(repair_batch)
    return int(ctx.stats["repaired"])


def _record_stats(ctx: RunContext, summary: dict[str, Any], files: ReportFiles | None) -> None:
    ctx.stats.update(
        users_checked=summary["users_checked"],
        discrepancies=summary["discrepancies"]["total"],
        discrepancies_by_kind={k: n for k, n in summary["discrepancies"]["by_kind"].items() if n},
        net_drift=summary["net_drift"],
        outstanding_points=summary["outstanding_points"],
        roll_forward_gap=summary["roll_forward"]["gap"],
    )
    if files:
        ctx.stats["report"] = str(files.csv)


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
            "summary": json.dumps(summary),
        })


# ── the summary ──────────────────────────────────────────────────────────────

def build_summary(run_id: int, as_of: datetime, snapshot: Snapshot, found: Found, *, repaired: int,
                  repair_requested: bool, files: ReportFiles | None) -> dict[str, Any]:
    """The JSON summary finance reads: totals, discrepancies by kind, and the roll-forward."""
    ledger, cache = snapshot.ledger, snapshot.cache
    by_kind = found.by_kind
    return {
        "report": "points reconciliation",
        "run_id": run_id,
        "as_of": _iso(as_of),
        "outstanding_points": int(ledger.closing),
        "users_checked": snapshot.users_checked,
        "ledger_rows": int(ledger.rows),
        "discrepancies": {"total": found.total, "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS}},
        "ledger": {"balance": int(ledger.balance), "total_earned": int(ledger.earned),
                   "total_spent": int(ledger.spent)},
        "cache": {"balance": int(cache.balance), "total_earned": int(cache.earned),
                  "total_spent": int(cache.spent), "rows": int(cache.rows)},
        "net_drift": int(cache.balance) - int(ledger.balance),
        "repair_requested": repair_requested,
        "repaired": repaired,
        "roll_forward": roll_forward(snapshot),
        "after_as_of": {"rows": int(ledger.rows_after_as_of), "points": int(ledger.points_after_as_of)},
        "files": {"csv": files.csv.name, "json": files.json.name} if files else None,
    }


def roll_forward(snapshot: Snapshot) -> dict[str, Any]:
    """opening + issued - spent - expired = closing, over ledger rows dated in (previous as-of, as-of].

    Both ends count rows by `created_at`, so the identity holds exactly unless rows dated on or
    before the previous as-of were written after that run; the gap is their sum.
    """
    previous = snapshot.previous
    opening = int(previous.closing_balance) if previous else 0
    issued = {m.type: int(m.issued) for m in snapshot.movements if m.issued}
    spent = {m.type: int(m.debited) for m in snapshot.movements if m.debited and m.type != EXPIRY}
    expired = sum(int(m.debited) for m in snapshot.movements if m.type == EXPIRY)
    expected = opening + sum(issued.values()) - sum(spent.values()) - expired
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
        "expected_closing": expected,
        "closing": closing,
        "identity_holds": gap == 0,
        "gap": gap,
        "gap_explanation": _explain_gap(gap, previous),
    }


def _explain_gap(gap: int, previous: Any | None) -> str | None:
    if gap == 0:
        return None
    if previous is None:  # cannot happen in one snapshot; said plainly should it ever
        return f"{gap:+d} points: the ledger's closing and its movements disagree"
    return (f"{gap:+d} points in ledger rows dated on or before the previous reconcile's as-of "
            f"({_iso(previous.as_of)}, run {previous.run_id}) were written after it ran "
            "(late or back-dated writes)")


_KEY_ORDER = ("report", "run_id", "status", "as_of", "outstanding_points", "users_checked", "ledger_rows",
              "discrepancies", "total", "by_kind", *KINDS, "ledger", "cache", "balance", "total_earned",
              "total_spent", "rows", "net_drift", "repair_requested", "repaired", "roll_forward",
              "previous_run_id", "period_after", "opening", "issued", "issued_total", "spent", "spent_total",
              "expired", "expected_closing", "closing", "identity_holds", "gap", "gap_explanation",
              "after_as_of", "points", "files", "csv", "json")
_RANK = {key: rank for rank, key in enumerate(_KEY_ORDER)}


def _ordered(value: Any) -> Any:
    """Keys in reading order (JSONB, where the summary is kept, does not keep the order)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda key: (_RANK.get(key, len(_RANK)), key))
        return {key: _ordered(value[key]) for key in keys}
    return value


def summary_json(summary: dict[str, Any]) -> str:
    """The `.json` file's text; `report --format json` prints the same."""
    return json.dumps(_ordered(summary), indent=2) + "\n"


def csv_row(row: Any) -> list[str]:
    """One discrepancy as CSV cells: kinds joined by `|`, an absent cache value left empty."""
    values = [getattr(row, column) for column in CSV_HEADER[2:]]
    return [str(row.user_id), "|".join(row.kinds), *("" if value is None else str(value) for value in values)]


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


# ── reading a report back (`python scheduler.py report`) ────────────────────

def render_report(engine: Engine, run_id: int | None, fmt: str) -> str | None:
    """A stored report as `table`, `csv` (the CSV file's text) or `json` (the summary file's text);
    None when there is no such report. `run_id` None means the latest."""
    with engine.connect() as conn:
        stored = conn.execute(_queries["report_run"], {"run_id": run_id}).first()
        if stored is None:
            return None
        if fmt == "json":
            return summary_json(stored.summary)
        rows = conn.execute(_queries["report_discrepancies"], {"run_id": stored.run_id},
                            execution_options=_streamed(1000))
        if fmt == "csv":
            return _csv_text(rows)
        if fmt == "table":
            return _table_text(stored, rows)
    raise ValueError(f"unknown report format {fmt!r}; one of table, csv, json")


def _csv_text(rows: Iterable[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(csv_row(row) for row in rows)
    return out.getvalue()


_TABLE_ROWS_SHOWN = 50


def _table_text(stored: Any, rows: Iterable[Any]) -> str:
    summary = stored.summary
    lines = [f"Points reconciliation: run {stored.run_id} ({stored.status}), as of {_when(summary['as_of'])}", ""]
    lines += _headline_lines(summary) + [""] + _roll_forward_lines(summary["roll_forward"]) + [""]
    lines += _discrepancy_lines(summary, rows)
    if stored.csv_file:
        lines += ["", f"Files: {stored.csv_file}", f"       {stored.json_file}"]
    return "\n".join(lines) + "\n"


def _headline_lines(summary: dict[str, Any]) -> list[str]:
    ledger, cache = summary["ledger"], summary["cache"]
    lines = [
        f"Outstanding points (ledger balance as of the as-of instant): {summary['outstanding_points']:,}",
        f"Users checked: {summary['users_checked']:,}   ledger rows: {summary['ledger_rows']:,}",
        "",
    ]
    table = [[field.replace("_", " "), f"{ledger[field]:,}", f"{cache[field]:,}", f"{cache[field] - ledger[field]:+,}"]
             for field in ("balance", "total_earned", "total_spent")]
    lines += _aligned(["", "ledger", "cache", "drift"], table, right=(1, 2, 3))
    after = summary["after_as_of"]
    if after["rows"]:
        lines.append(f"(ledger and cache include {after['rows']:,} rows, {after['points']:+,} points, "
                     "dated after the as-of instant)")
    return lines


def _roll_forward_lines(roll: dict[str, Any]) -> list[str]:
    since = (f"since run {roll['previous_run_id']} as of {_when(roll['period_after'])}"
             if roll["previous_run_id"] else "since the beginning of the ledger")
    table = [["opening", f"{roll['opening']:,}"]]
    table += [[f"+ issued {kind}", f"{points:,}"] for kind, points in sorted(roll["issued"].items())]
    table += [[f"- spent {kind}", f"{-points:,}"] for kind, points in sorted(roll["spent"].items())]
    table += [["- expired", f"{-roll['expired']:,}"], ["= expected closing", f"{roll['expected_closing']:,}"],
              ["closing", f"{roll['closing']:,}"]]
    verdict = ("identity holds (gap 0)" if roll["identity_holds"]
               else f"IDENTITY GAP {roll['gap']:+,}: {roll['gap_explanation']}")
    return [f"Roll-forward {since}", *("  " + line for line in _aligned(None, table, right=(1,))), "  " + verdict]


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
