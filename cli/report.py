"""`report [RUN_ID|latest] --format …`: a stored reconciliation report as a table a terminal can read,
or in a file format again (`jobs/reports/stored.py`). The demo prints the same table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import Engine

from cli.tables import aligned_lines
from core.clock import when
from jobs.reconcile_summary import KINDS
from jobs.reports import stored as stored_reports
from jobs.reports.files import csv_row
from jobs.reports.finance import roll_forward_lines, usd

FORMATS = ("table", *stored_reports.FILE_FORMATS)
TABLE_ROWS_SHOWN = 50
NotAReport = stored_reports.NotAReport


def render_report(engine: Engine, run_id: int | None, fmt: str, *, xlsx_path: Path | None = None) -> str | None:
    """A stored report as `table`, `csv` (the CSV file's text), `json` (the summary file's text) or
    `html`; `xlsx` is written to `xlsx_path` (returns its path). None when there is no such run or report;
    `NotAReport` when the run is of another job or a dry run. `run_id` None means the latest."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(FORMATS)}")
    with engine.connect() as conn:
        stored = stored_reports.find(conn, run_id)
        if stored is None:
            return None
        if fmt == "table":
            return report_table(stored, stored_reports.discrepancies(conn, stored.run_id))
        return stored_reports.render(conn, stored, fmt, xlsx_path=xlsx_path)


def report_table(stored: Any, rows: Iterable[Any]) -> str:
    """The report as text: headline, cache against ledger, roll-forward, clawbacks, the first discrepancies."""
    summary = stored.summary
    lines = [f"Points reconciliation: run {stored.run_id} ({stored.status}), as of {when(summary['as_of'])}",
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
    ledger, cache = summary["ledger"], summary["cache"]
    money = summary.get("outstanding_money")
    lines = [
        f"Outstanding liability (ledger balance as of the as-of instant): {summary['outstanding_points']:,} points"
        + (f" = {usd(money['usd'])} at {money['points_per_usd']} points per US$" if money else ""),
        f"Users checked: {summary['users_checked']:,}   ledger rows: {summary['ledger_rows']:,}",
        "",
    ]
    # (label, key, the key of summaries written before the columns were renamed)
    fields = [("balance", "balance", "balance"), ("total credits", "total_credits", "total_earned"),
              ("total debits", "total_debits", "total_spent")]
    table = [[label, f"{ledger.get(key, ledger.get(old)):,}", f"{cache.get(key, cache.get(old)):,}",
              f"{cache.get(key, cache.get(old)) - ledger.get(key, ledger.get(old)):+,}"]
             for label, key, old in fields]
    lines += aligned_lines(["", "ledger", "cache", "drift"], table, right=(1, 2, 3))
    after = summary["after_as_of"]
    if after["rows"]:
        lines.append(f"(ledger and cache include {after['rows']:,} rows, {after['points']:+,} points, "
                     "dated after the as-of instant)")
    return lines


def _roll_forward_lines(roll: dict[str, Any]) -> list[str]:
    since = (f"since run {roll['previous_run_id']} as of {when(roll['period_after'])}"
             if roll["previous_run_id"] else "since the beginning of the ledger")
    table = [[line.label, f"{line.value:,}" if line.role in ("opening", "expected", "closing") else f"{line.value:+,}",
              line.note] for line in roll_forward_lines(roll)]
    verdict = ("identity holds: " + roll.get("identity", "") if roll["identity_holds"]
               else f"IDENTITY GAP {roll['gap']:+,}: {roll['gap_explanation']}")
    return [f"Roll-forward {since} (points)", *("  " + line for line in aligned_lines(None, table, right=(1,))),
            "  " + verdict]


def _unrecovered_lines(summary: dict[str, Any]) -> list[str]:
    unrecovered = summary.get("unrecovered_clawbacks")
    if not unrecovered:
        return []
    lines = [f"Clawbacks of the period: {unrecovered['clawbacks']:,} ({unrecovered['clawed_back_points']:,} points "
             f"clawed back); unrecovered: {unrecovered['unrecovered_points']:,} points on "
             f"{unrecovered['rewards_unrecovered']:,} rewards"]
    if "outstanding_points" in unrecovered:
        cash = unrecovered.get("money") or {}
        lines.append(f"Unrecovered outstanding {unrecovered['outstanding_opening']:,} "
                     f"+ {unrecovered['unrecovered_points']:,} newly recorded - {unrecovered['recovered_points']:,} "
                     f"recovered = {unrecovered['outstanding_points']:,} points"
                     + (f" ({usd(cash['outstanding_usd'])})" if cash else ""))
    findings = summary.get("findings")
    if findings is not None:
        lines.append(f"Rules audit: {findings['total']:,} finding(s)" + "".join(
            f", {kind} {count:,}" for kind, count in findings["by_kind"].items() if count))
    return lines + [""]


def _discrepancy_lines(summary: dict[str, Any], rows: Iterable[Any]) -> list[str]:
    found = summary["discrepancies"]
    kinds = ", ".join(f"{kind} {found['by_kind'][kind]}" for kind in KINDS if found["by_kind"].get(kind))
    repaired = f"; repaired {summary['repaired']}" if summary["repair_requested"] else ""
    lines = [f"Discrepancies: {found['total']:,}" + (f" ({kinds})" if kinds else "") + repaired]
    if not found["total"]:
        return lines
    shown = []
    for number, row in enumerate(rows):
        if number == TABLE_ROWS_SHOWN:
            break
        shown.append(csv_row(row))
    header = ["user_id", "kinds", "cached", "ledger", "drift", "cached earned", "ledger earned",
              "cached spent", "ledger spent"]
    lines += aligned_lines(header, shown, right=tuple(range(2, 9)))
    if found["total"] > len(shown):
        lines.append(f"… and {found['total'] - len(shown):,} more: report {summary['run_id']} --format csv")
    return lines
