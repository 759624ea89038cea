"""`report [RUN_ID|latest] --format …`: a stored reconciliation report as text a terminal reads, or in a
file format again (`jobs/reports/stored.py`). The demo prints the same text.

Every table goes through `cli.tables.build_table` and fits the width (80 columns when piped, or
`COLUMNS`): whole columns drop by priority (the ledger code, the previous period's money, the cache's
credit and debit columns first); a line's meaning wraps under its label; discrepancy kinds fold onto
more lines; sentences wrap. Lines are the document's (`jobs/reports/document.py`): the same words,
signs and money as the HTML and the workbook."""
from __future__ import annotations

import io
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Sequence

from rich.console import Console
from sqlalchemy import Engine

from cli.tables import Column, build_table, cell, fit_widths
from cli.terminal import stdout_console
from core.clock import when
from jobs.reconcile_summary import KINDS
from jobs.reports import stored as stored_reports
from jobs.reports.document import DiscrepancyRow, Document, Line, ReportData, month_name, restated_label
from jobs.reports.finance import journal_file

FORMATS = ("table", *stored_reports.FILE_FORMATS)
TABLE_ROWS_SHOWN = 50
NotAReport = stored_reports.NotAReport
StoredReport = stored_reports.StoredReport
Cell = str | int | None


def render_report(engine: Engine, run_id: int | None, fmt: str, *, xlsx_path: Path | None = None,
                  width: int | None = None) -> str | None:
    """A stored report as `table` (at most `width` wide; the console's when None), `csv` (the CSV
    file's text), `json` (the summary file's text) or `html`; `xlsx` is written to `xlsx_path` (returns
    its path). None when there is no such run or report; `NotAReport` when the run is of another job or
    a dry run. `run_id` None means the latest."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; one of {', '.join(FORMATS)}")
    with engine.connect() as conn:
        stored = stored_reports.find(conn, run_id)
        if stored is None:
            return None
        if fmt == "table":
            document = stored_reports.document(conn, stored)
            return report_table(stored, stored_reports.discrepancies(conn, stored.run_id), document=document,
                                width=width or stdout_console().width)
        return stored_reports.render(conn, stored, fmt, xlsx_path=xlsx_path)


def report_table(stored: StoredReport, rows: Iterable[DiscrepancyRow], *, document: Document | None = None,
                 width: int = 80) -> str:
    """The report as text at most `width` wide: headline, cache against ledger, roll-forward (with the
    previous period when `document` has one), restatements, schedule, clawbacks, the first discrepancies."""
    summary = stored.summary
    document = document or Document(summary=summary, run_status=stored.status, largest=[])
    out = Text(width)
    out.para(f"Points reconciliation: run {stored.run_id} ({stored.status}), as of {when(summary['as_of'])}")
    out.para(f"Status: {summary.get('verdict', '')}")
    out.blank()
    _headline(out, summary)
    out.blank()
    roll_forward_section(out, document)
    restatements_section(out, summary)
    schedule_section(out, document)
    _unrecovered(out, summary)
    _discrepancies(out, summary, rows)
    files = _files(stored)
    if files:
        out.blank()
        folder = {str(Path(name).parent) for name in files}
        if len(folder) == 1:  # the folder once, then the names: each whole on its line as far as the width allows
            out.para(f"Files, in {folder.pop()}:")
            for name in files:
                out.para(Path(name).name, indent="  ")
        else:
            out.lines += ["Files:"]
            for name in files:
                out.para(name, indent="  ")
    return out.text()


class Text:
    """Lines of text at most `width` wide: sentences wrapped, tables fitted by `build_table`."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lines: list[str] = []

    def para(self, sentence: str, indent: str = "") -> None:
        self.lines += textwrap.wrap(sentence, self.width, initial_indent=indent, subsequent_indent=indent + "  ",
                                    break_on_hyphens=False) or [""]

    def blank(self) -> None:
        self.lines.append("")

    def table(self, columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> list[int | None]:
        """Appends the table fitted to the width; returns each column's width (None: left out)."""
        console = Console(file=io.StringIO(), width=self.width, color_system=None, highlight=False, soft_wrap=False)
        with console.capture() as captured:
            console.print(build_table(columns, rows, width=self.width))
        self.lines += [line.rstrip() for line in captured.get().splitlines()]
        return fit_widths(columns, [[cell(value) for value in row] for row in rows], self.width)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _headline(out: Text, summary: ReportData) -> None:
    money = summary.get("outstanding_money")
    out.para(f"Outstanding liability: {summary['outstanding_points']:,} points"
             + (f" = {usd(money['usd'])} at {money['points_per_usd']} points per US$" if money else ""))
    out.para("(the ledger balance dated at or before the as-of instant)", indent="  ")
    out.para(f"Users checked: {summary['users_checked']:,}   ledger rows: {summary['ledger_rows']:,}")
    out.blank()
    ledger, cache = summary["ledger"], summary["cache"]
    # (label, key, the key of summaries written before the columns were renamed)
    fields = [("balance", "balance", "balance"), ("total credits", "total_credits", "total_earned"),
              ("total debits", "total_debits", "total_spent")]
    rows: list[list[Cell]] = []
    for label, key, old in fields:
        in_ledger, in_cache = int(ledger.get(key, ledger.get(old, 0))), int(cache.get(key, cache.get(old, 0)))
        rows.append([label, points(in_ledger), points(in_cache), signed(in_cache - in_ledger)])
    out.table([Column(""), Column("ledger", right=True), Column("cache", right=True), Column("drift", right=True)],
              rows)
    after = summary["after_as_of"]
    if after["rows"]:
        out.para(f"(ledger and cache include {after['rows']:,} rows, {after['points']:+,} points, dated after the "
                 "as-of instant)")


def roll_forward_section(out: Text, document: Document) -> None:
    roll = document.summary["roll_forward"]
    out.para("Roll-forward of the liability (points; each line signed as it moves the liability)")
    out.para(f"Covers {document.covers}.", indent="  ")
    previous = document.previous
    if previous:
        out.para(f"Previous: {previous.label}.", indent="  ")
    columns = [Column("line", wrap=True), Column("points", right=True), Column("US$", right=True, drop=1),
               Column("previous", right=True, drop=2), Column("prev. US$", right=True, drop=4),
               Column("meaning", flex=True, wrap=True, drop=3), Column("code", drop=5)]
    lines = document.lines
    rows: list[list[Cell]] = [[line.label, _value(line, line.value), _money(line, line.money),
                               _value(line, line.previous), _money(line, line.previous_money), line.meaning,
                               line.code] for line in lines]
    if not previous:
        columns, rows = columns[:3] + columns[5:], [row[:3] + row[5:] for row in rows]
    meaning = [column.header for column in columns].index("meaning")
    if out.table(columns, rows)[meaning] is None:  # too narrow for the words beside the numbers: under them
        out.para("What the lines are:", indent="  ")
        for line in lines:
            out.para(f"{line.label}: {line.meaning}", indent="    ")
    if roll.get("identity_holds", True):
        out.para("identity holds: opening + total issued + total used up + late rows = closing", indent="  ")
    else:
        out.para(f"IDENTITY GAP {roll['gap']:+,}: {roll['gap_explanation']}", indent="  ")
    out.blank()


def _value(line: Line, value: int | None) -> str:
    if value is None:
        return ""
    return points(value) if line.balance else signed(value)


def _money(line: Line, amount: str | None) -> str:
    if amount is None:
        return ""
    return usd(amount) if line.balance else signed_usd(amount)


def restatements_section(out: Text, summary: ReportData, *, none_signed: str | None = None) -> None:
    """The signed-off months' changes since their sign-off; with no month signed, `none_signed` (or nothing)."""
    restated = summary.get("restatements")
    if restated is None:
        if none_signed:
            out.para(none_signed)
            out.blank()
        return
    if not restated["months"]:
        out.para(f"Restatements: none; no signed-off month changed since its sign-off "
                 f"({restated['months_checked']} checked).")
        out.blank()
        return
    out.para(f"Restatements of signed-off months: {signed(restated['total_change'])} points "
             f"({signed_usd(restated['total_change_usd'])}) in total")
    rows: list[list[Cell]] = []
    for month in restated["months"]:
        closing = next((line for line in month["lines"] if line["key"] == "closing"), None)
        for line in month["lines"]:
            if line["key"] != "closing":
                written = points if line["key"] == "opening" else signed  # a balance, or a movement
                rows.append([month["period"], restated_label(line["key"]), written(line["signed"]),
                             written(line["now"]), signed(line["change"]), signed_usd(line["change_usd"])])
        rows.append([month["period"], "Closing liability", points(closing["signed"]) if closing else "",
                     points(closing["now"]) if closing else "", signed(month["closing_change"]),
                     signed_usd(month["closing_change_usd"])])
    out.table([Column("month"), Column("line", flex=True, wrap=True), Column("as signed", right=True, drop=2),
               Column("now", right=True, drop=2), Column("change", right=True),
               Column("change US$", right=True, drop=1)], rows)
    out.blank()


def schedule_section(out: Text, document: Document, *, with_journal: bool = True) -> None:
    summary = document.summary
    schedule, breakage = summary.get("liability_schedule"), summary.get("breakage")
    if schedule:
        out.para(f"Liability schedule: the {schedule['outstanding_points']:,} points outstanding at "
                 f"{when(schedule['as_of'])} by when they expire if not spent")
        rows: list[list[Cell]] = [["past expiry, due now", points(schedule["due_now_points"]),
                                   _usd_of(document, schedule["due_now_points"])]]
        rows += [[month_name(month["month"]), points(month["points"]), usd(month["usd"]) if month["usd"] else ""]
                 for month in schedule["months"]]
        rows += [["later, or never", points(schedule["later_points"]), _usd_of(document, schedule["later_points"])],
                 ["total", points(schedule["total_points"]), _usd_of(document, schedule["total_points"])]]
        out.table([Column("expires"), Column("points", right=True), Column("US$", right=True, drop=1)], rows)
    if breakage:
        rate = f"{float(breakage['rate']) * 100:.2f} %" if breakage["rate"] else "n/a"
        out.para(f"Breakage, {when(breakage['from'])} to {when(breakage['to'])}: {breakage['expired_points']:,} "
                 f"points expired of {breakage['issued_points']:,} issued ({rate})")
    if schedule or breakage:
        out.blank()
    journal = journal_file(summary) if with_journal else None
    if journal:
        out.para(f"Journal: {journal}")
        out.blank()


def _usd_of(document: Document, value: int) -> str:
    amount = document.money(value)
    return usd(amount) if amount is not None else ""


def _unrecovered(out: Text, summary: ReportData) -> None:
    unrecovered = summary.get("unrecovered_clawbacks")
    if unrecovered:
        out.para(f"Clawbacks of the period: {unrecovered['clawbacks']:,} ({unrecovered['clawed_back_points']:,} "
                 f"points clawed back); unrecovered: {unrecovered['unrecovered_points']:,} points on "
                 f"{unrecovered['rewards_unrecovered']:,} rewards")
        if "outstanding_points" in unrecovered:
            cash = unrecovered.get("money")
            out.para(f"Unrecovered outstanding {unrecovered['outstanding_opening']:,} "
                     f"+ {unrecovered['unrecovered_points']:,} newly recorded - {unrecovered['recovered_points']:,} "
                     f"recovered = {unrecovered['outstanding_points']:,} points"
                     + (f" ({usd(cash['outstanding_usd'])})" if cash else ""))
    findings = summary.get("findings")
    if unrecovered and findings is not None:
        out.para(f"Rules audit: {findings['total']:,} finding(s)" + "".join(
            f", {kind} {count:,}" for kind, count in findings["by_kind"].items() if count))
    if unrecovered:
        out.blank()


def _discrepancies(out: Text, summary: ReportData, rows: Iterable[DiscrepancyRow]) -> None:
    found = summary["discrepancies"]
    kinds = ", ".join(f"{kind} {found['by_kind'][kind]}" for kind in KINDS if found["by_kind"].get(kind))
    repaired = f"; repaired {summary['repaired']}" if summary["repair_requested"] else ""
    out.para(f"Discrepancies: {found['total']:,}" + (f" ({kinds})" if kinds else "") + repaired)
    if not found["total"]:
        return
    shown: list[list[Cell]] = []
    for number, row in enumerate(rows):
        if number == TABLE_ROWS_SHOWN:
            break
        shown.append([str(row.user_id), signed(row.drift), "\n".join(row.kinds), _count(row.cached_balance),
                      points(row.ledger_balance), _count(row.cached_total_earned), points(row.ledger_total_earned),
                      _count(row.cached_total_spent), points(row.ledger_total_spent)])
    out.table([Column("user_id"), Column("drift", right=True), Column("kinds", wrap=True),  # one kind a line
               Column("cached", right=True, drop=2), Column("ledger", right=True, drop=2),
               Column("cached earned", right=True, drop=4), Column("ledger earned", right=True, drop=4),
               Column("cached spent", right=True, drop=3), Column("ledger spent", right=True, drop=3)], shown)
    if found["total"] > len(shown):
        out.para(f"… and {found['total'] - len(shown):,} more: report {summary['run_id']} --format csv")


def _count(value: int | None) -> str:
    return "" if value is None else points(value)


# Numbers as a terminal writes them: ASCII signs (the HTML's typographic minus is for print).

def points(value: int) -> str:
    return f"{value:,}"


def signed(value: int) -> str:
    return f"{value:+,}" if value else "0"


def usd(amount: str) -> str:
    value = Decimal(amount)
    return ("-" if value < 0 else "") + f"${abs(value):,.2f}"


def signed_usd(amount: str | None) -> str:
    if amount is None:
        return "n/a"
    value = Decimal(amount)
    return ("+" if value > 0 else "-" if value < 0 else "") + f"${abs(value):,.2f}"


def _files(stored: StoredReport) -> list[str]:
    if not stored.csv_file:
        return []
    files = [stored.csv_file, *([stored.json_file] if stored.json_file else [])]
    names = stored.summary.get("files") or {}
    files += [str(Path(stored.csv_file).with_name(names[kind])) for kind in ("html", "xlsx", "journal")
              if names.get(kind)]
    return files
