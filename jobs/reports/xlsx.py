"""The finance report as an xlsx workbook (openpyxl, write-only: the Discrepancies sheet streams every
row, so memory stays flat).

A reconcile's: sheets Summary, Roll-forward, Discrepancies, Monthly (and Findings, Restatements,
Schedule, Journal when the summary has them); a closed month's: Summary, Roll-forward, Restatements,
Schedule, Journal. Every sheet starts with the as-of (a date cell), the run or the period, and the
points per US$ that turn points into money.

Numbers are numeric cells, instants are date cells (UTC; Excel has no time zones), and what a
controller would check is a formula: the subtotals, every money cell (points ÷ the points per US$ of
row 2, to the cent), the closing liability (opening + total issued + total used up + late rows, a
formula of the lines that evaluates to the ledger's closing), the schedule's total and the journal's
debits and credits. The signs are the document's: a line is signed as it moves the liability.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence, cast

from jobs.reconcile_summary import KINDS
from jobs.reports.document import (Document, DiscrepancyRow, FindingRow, Line, ReportData, month_name, monthly_rows,
                                   restated_label)
from jobs.reports.files import CSV_HEADER as DISCREPANCY_HEADER

if TYPE_CHECKING:
    from openpyxl import Workbook
    from openpyxl.cell.cell import Cell
    from openpyxl.worksheet.worksheet import Worksheet

POINTS = "#,##0;-#,##0;0"
SIGNED = "+#,##0;-#,##0;0"
USD = '"$"#,##0.00;-"$"#,##0.00;"$"0.00'
SIGNED_USD = '+"$"#,##0.00;-"$"#,##0.00;"$"0.00'
INSTANT = 'yyyy-mm-dd hh:mm:ss "UTC"'
DAY = "yyyy-mm-dd"
MONTH = "yyyy-mm"
RATE = "0.00%"
HEADER_ROW = 4  # rows 1-2: title, as-of, run or period, points per US$; 3 empty; 4 the header
PRICE = "$F$2"  # the points per US$ of row 2, which every money formula divides by

FINDINGS_HEADER = ("kind", "user_id", "referred_user_id", "level", "month", "reward_key", "points", "detail")
CellValue = str | float | Decimal | datetime | None


def write(document: Document, discrepancies: Iterable[DiscrepancyRow], path: Path,
          findings: Iterable[FindingRow] = ()) -> None:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    summary = document.summary
    _summary_sheet(book, document)
    _roll_forward_sheet(book, document)
    if not document.is_period:
        _discrepancies_sheet(book, document, discrepancies)
        _monthly_sheet(book, document)
        if summary.get("findings") is not None:
            _findings_sheet(book, document, findings)
    if summary.get("restatements"):
        _restatements_sheet(book, document)
    if summary.get("liability_schedule"):
        _schedule_sheet(book, document)
    if summary.get("journal"):
        _journal_sheet(book, document)
    book.save(path)


# ── cells and rows ────────────────────────────────────────────────────────────

def instant(moment: str | datetime | None) -> datetime | None:
    """An instant as Excel holds one: naive, in UTC (the number format says so)."""
    if moment is None:
        return None
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def month_start(month: str) -> datetime:
    """`2026-05` as the date cell of the month's first day (shown `yyyy-mm`)."""
    return datetime.strptime(month, "%Y-%m")


@dataclass
class _Sheet:
    """A write-only sheet that knows the number of the row it appends next (for the formulas)."""

    sheet: Worksheet  # a write-only sheet: the same properties, rows only appended
    row: int = 1

    def cell(self, value: CellValue, number_format: str | None = None, bold: bool = False,
             italic: bool = False) -> Cell:
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Font

        cell = WriteOnlyCell(self.sheet, value=float(value) if isinstance(value, Decimal) else value)
        if number_format:
            cell.number_format = number_format
        if bold or italic:
            cell.font = Font(bold=bold, italic=italic)
        return cell

    def append(self, values: Sequence[Cell | CellValue] = ()) -> int:
        """Appends a row; returns its number."""
        self.sheet.append(list(values))
        self.row += 1
        return self.row - 1

    def header(self, names: Iterable[str]) -> int:
        return self.append([self.cell(name, bold=True) for name in names])

    def widths(self, **columns: float) -> None:
        for letter, width in columns.items():
            self.sheet.column_dimensions[letter].width = width


def _new_sheet(book: Workbook, document: Document, name: str, title: str, *, frozen: bool = False,
               **widths: float) -> _Sheet:
    """A sheet with its title and row 2: as-of, run (or period), points per US$ (F2, the price the money
    formulas divide by). Its column widths and frozen header are set first: a write-only sheet writes
    them with its first row."""
    sheet = _Sheet(cast("Worksheet", book.create_sheet(name)))
    sheet.widths(**widths)
    if frozen:
        sheet.sheet.freeze_panes = f"A{HEADER_ROW + 1}"
    summary = document.summary
    sheet.append([sheet.cell(title, bold=True)])
    which: list[Cell | CellValue] = (
        ["Period", sheet.cell(month_start(summary["period"]), MONTH)] if document.is_period
        else ["Run", document.run_id])
    price = document.points_per_usd
    sheet.append(["As of", sheet.cell(instant(summary["as_of"]), INSTANT), *which, "Points per US$",
                  sheet.cell(price if price else None, "0.####")])
    sheet.append()
    return sheet


def _money_formula(sheet: _Sheet, document: Document, column: str, row: int, signed: bool = True) -> Cell:
    """Money of the points in `column``row`: points ÷ the price of F2, rounded to the cent (as the
    document's money is); empty when points have no price."""
    if not document.points_per_usd:
        return sheet.cell(None)
    return sheet.cell(f"=ROUND({column}{row}/{PRICE},2)", SIGNED_USD if signed else USD)


def _usd(amount: str | None) -> Decimal | None:
    return None if amount is None else Decimal(amount)


# ── Summary ───────────────────────────────────────────────────────────────────

def _summary_sheet(book: Workbook, document: Document) -> None:
    s = document.summary
    sheet = _new_sheet(book, document, "Summary", document.title, A=52, B=24, C=12, D=12)
    sheet.header(("Item", "Value"))
    rows = _period_items(s) if document.is_period else _reconcile_items(s)
    money = s.get("outstanding_money")
    schedule, breakage = s.get("liability_schedule"), s.get("breakage")
    rows += [("Outstanding liability (points)", s["outstanding_points"], POINTS),
             ("Outstanding liability (US$)", _usd(money["usd"]) if money else None, USD)]
    if schedule:
        rows += [("Due to expire now (past expiry, not yet expired)", schedule["due_now_points"], POINTS)]
    if breakage:
        rows += [("Breakage: points expired in the 12 months before the as-of", breakage["expired_points"], POINTS),
                 ("Breakage: points issued in the same 12 months", breakage["issued_points"], POINTS),
                 ("Breakage rate (expired ÷ issued)", float(breakage["rate"]) if breakage["rate"] else None, RATE)]
    restated = s.get("restatements")
    if restated is not None:
        rows += [("Restatements: months checked", restated["months_checked"], POINTS),
                 ("Restatements: total change of signed closings (points)", restated["total_change"], SIGNED),
                 ("Restatements: total change (US$)", _usd(restated["total_change_usd"]), SIGNED_USD)]
    for label, value, number_format in rows:
        sheet.append([label, sheet.cell(value, number_format)])


Item = tuple[str, CellValue, str | None]


def _period_items(s: ReportData) -> list[Item]:
    digest = s.get("digest") or {}
    return [("Period", month_name(s["period"]), None),
            ("Rows dated from", instant(s["from"]), INSTANT),
            ("to before", instant(s["to"]), INSTANT),
            ("Status", s["status"], None),
            ("Signed off by", s.get("signed_by"), None),
            ("Signed off at", instant(s.get("signed_at")), INSTANT),
            ("Ledger rows of the period (digest)", _int(digest.get("rows")), POINTS),
            ("Points of the period (digest)", _int(digest.get("points")), SIGNED),
            ("Digest", str(digest.get("hash", "")), None)]


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, str)) else None


def _reconcile_items(s: ReportData) -> list[Item]:
    rows: list[Item] = [
        ("Status", s["verdict"], None),
        ("Users checked", s["users_checked"], POINTS),
        ("Ledger rows", s["ledger_rows"], POINTS),
        ("Discrepant users", s["discrepancies"]["total"], POINTS),
        *((f"  {kind}", s["discrepancies"]["by_kind"][kind], POINTS) for kind in KINDS),
        ("Net drift (cache - ledger)", s["net_drift"], SIGNED),
        ("Repaired", s["repaired"], POINTS),
    ]
    unrecovered = s.get("unrecovered_clawbacks")
    if unrecovered:
        rows += [("Clawbacks in the period", unrecovered["clawbacks"], POINTS),
                 ("Points clawed back", unrecovered["clawed_back_points"], POINTS),
                 ("Rewards not fully recovered", unrecovered["rewards_unrecovered"], POINTS),
                 ("Points unrecovered", unrecovered["unrecovered_points"], POINTS)]
        if "outstanding_points" in unrecovered:
            cash = unrecovered.get("money")
            rows += [("Points unrecovered dated on or before the previous as-of",
                      unrecovered["late"]["unrecovered_points"], POINTS),
                     ("Points expired before their clawback", unrecovered["expired_points"], POINTS),
                     ("Unrecovered outstanding at the previous reconcile", unrecovered["outstanding_opening"], POINTS),
                     ("Points recovered", unrecovered["recovered_points"], POINTS),
                     ("Unrecovered outstanding at the as-of", unrecovered["outstanding_points"], POINTS),
                     ("Unrecovered newly recorded (US$)", _usd(cash["unrecovered_usd"]) if cash else None, USD),
                     ("Recovered (US$)", _usd(cash["recovered_usd"]) if cash else None, USD),
                     ("Unrecovered outstanding (US$)", _usd(cash["outstanding_usd"]) if cash else None, USD)]
    findings = s.get("findings")
    if findings is not None:
        rows += [("Rules audit findings", findings["total"], POINTS),
                 *((f"  {kind}", count, POINTS) for kind, count in findings["by_kind"].items())]
    return rows


# ── Roll-forward: the lines, their subtotals and the identity as formulas ─────

def _roll_forward_sheet(book: Workbook, document: Document) -> None:
    sheet = _new_sheet(book, document, "Roll-forward", "Roll-forward of the points liability: " + document.covers,
                       A=38, B=16, C=16, D=16, E=16, F=90, G=34)
    previous = document.previous
    sheet.header(("Line", "Points", "US$", f"Previous: {previous.label}" if previous else "Previous", "Previous US$",
                  "Meaning", "Ledger code"))
    lines = document.lines
    gap = next((line for line in lines if line.role == "gap"), None)
    rows: dict[str, int] = {}
    runs: dict[str, list[int]] = {"issued": [], "used": [], "late": []}
    for line in lines:
        if line.role == "gap":
            continue
        if line.role == "closing" and gap is not None:
            rows["gap"] = _line_row(sheet, document, gap, None)  # as stored, before the closing it explains
        formula = _line_formula(line.key, rows, runs, gap is not None)
        rows[line.key] = _line_row(sheet, document, line, formula)
        if line.role in runs:
            runs[line.role].append(rows[line.key])
    sheet.append()
    ledger = sheet.append(["Ledger balance at the as-of (stored)",
                           sheet.cell(document.summary["roll_forward"]["closing"], POINTS, bold=True)])
    sheet.append(["Closing less the ledger (0: the identity holds)",
                  sheet.cell(f"=B{rows['closing']}-B{ledger}", SIGNED, bold=True),
                  None, None, None, document.summary["roll_forward"].get("identity", "")])


def _line_formula(key: str, rows: dict[str, int], runs: dict[str, list[int]], with_gap: bool) -> str | None:
    """The formula of a computed line over column {c}: subtotals sum their lines, the expected closing is
    opening + total issued + total used up + late rows, the closing is the expected closing (+ the gap)."""
    if key == "issued_total":
        return _sum(runs["issued"])
    if key == "used_total":
        return _sum(runs["used"])
    if key == "expected":
        late = "".join(f"+{{c}}{row}" for row in runs["late"])
        return f"={{c}}{rows['opening']}+{{c}}{rows['issued_total']}+{{c}}{rows['used_total']}{late}"
    if key == "closing":
        return f"={{c}}{rows['expected']}" + (f"+{{c}}{rows['gap']}" if with_gap else "")
    return None


def _sum(rows: list[int]) -> str:
    return f"=SUM({{c}}{rows[0]}:{{c}}{rows[-1]})" if rows else "=0"


def _line_row(sheet: _Sheet, document: Document, line: Line, formula: str | None) -> int:
    """One line: label, points (a number, or the formula for a computed line), money, the previous
    period's points and money, its meaning and its ledger code."""
    row = sheet.row
    strong = line.role in ("opening", "closing", "subtotal", "expected")
    number = POINTS if line.balance else SIGNED
    points = formula.format(c="B") if formula else line.value
    before = (formula.format(c="D") if formula else line.previous) if line.previous is not None else None
    sheet.append([sheet.cell(line.label, bold=strong, italic=line.role == "subtotal"),
                  sheet.cell(points, number, bold=strong), _money_formula(sheet, document, "B", row, not line.balance),
                  sheet.cell(before, number),
                  _money_formula(sheet, document, "D", row, not line.balance) if before is not None else None,
                  line.meaning, line.code])
    return row


# ── Discrepancies, Monthly, Findings ──────────────────────────────────────────

def _discrepancies_sheet(book: Workbook, document: Document, discrepancies: Iterable[DiscrepancyRow]) -> None:
    sheet = _new_sheet(book, document, "Discrepancies", "Discrepant users (every one, by user id)", frozen=True,
                       A=38, B=34)
    sheet.header(DISCREPANCY_HEADER)
    for row in discrepancies:
        sheet.append([str(row.user_id), "|".join(row.kinds),
                      *(sheet.cell(getattr(row, column), POINTS) for column in DISCREPANCY_HEADER[2:])])
    sheet.sheet.auto_filter.ref = f"A{HEADER_ROW}:I{max(sheet.row - 1, HEADER_ROW)}"


MONTHLY_COLUMNS = ("issued", "spent", "expired", "clawed_back")


def _monthly_sheet(book: Workbook, document: Document) -> None:
    months = monthly_rows(document.summary.get("monthly", []))
    covers = f"{months[0]['month']} to {months[-1]['month']}" if months else "none"
    sheet = _new_sheet(book, document, "Monthly",
                       f"Points per calendar month (UTC), the 12 months {covers}; the last is partial, up to the "
                       "as-of. Signed as they move the liability.", frozen=True, A=12, B=14, C=14, D=14, E=14, F=14)
    sheet.header(("month", "issued", "spent", "expired", "clawed_back", "net change"))
    first = sheet.row
    for month in months:
        row = sheet.row
        sheet.append([sheet.cell(month_start(str(month["month"])), MONTH),
                      *(sheet.cell(month[key], SIGNED) for key in MONTHLY_COLUMNS),
                      sheet.cell(f"=SUM(B{row}:E{row})", SIGNED)])
    if months:
        last = sheet.row - 1
        sheet.append([sheet.cell("total", bold=True),
                      *(sheet.cell(f"=SUM({c}{first}:{c}{last})", SIGNED, bold=True) for c in "BCDEF")])


def _findings_sheet(book: Workbook, document: Document, findings: Iterable[FindingRow]) -> None:
    sheet = _new_sheet(book, document, "Findings", "Rules audit: every finding (docs/rules.md, the invariant)",
                       frozen=True, A=22, B=38, H=90)
    sheet.header(FINDINGS_HEADER)
    for row in findings:
        sheet.append([row.kind, str(row.user_id) if row.user_id else None,
                      str(row.referred_user_id) if row.referred_user_id else None, row.level, row.month,
                      row.reward_key, sheet.cell(row.points, SIGNED) if row.points is not None else None, row.detail])


# ── Restatements, Schedule, Journal ───────────────────────────────────────────

def _restatements_sheet(book: Workbook, document: Document) -> None:
    restated = document.summary.get("restatements")
    assert restated is not None
    sheet = _new_sheet(book, document, "Restatements",
                       "Changes to signed-off months since their sign-off, by line (signed as the liability moves)",
                       A=10, B=18, C=22, D=36, E=30, F=14, G=14, H=14, I=14)
    sheet.header(("month", "signed off by", "signed off at", "line", "ledger key", "as signed", "now", "change",
                  "change US$"))
    for month in restated["months"]:
        for line in month["lines"]:
            row = sheet.row
            sheet.append([sheet.cell(month_start(month["period"]), MONTH), month["signed_by"],
                          sheet.cell(instant(month["signed_at"]), INSTANT), restated_label(line["key"]), line["key"],
                          sheet.cell(line["signed"], SIGNED), sheet.cell(line["now"], SIGNED),
                          sheet.cell(f"=G{row}-F{row}", SIGNED), sheet.cell(_usd(line["change_usd"]), SIGNED_USD)])
    sheet.append()
    sheet.append([sheet.cell("Total change of the signed closings", bold=True), None, None, None, None, None, None,
                  sheet.cell(restated["total_change"], SIGNED, bold=True),
                  sheet.cell(_usd(restated["total_change_usd"]), SIGNED_USD, bold=True)])


def _schedule_sheet(book: Workbook, document: Document) -> None:
    schedule = document.summary.get("liability_schedule")
    assert schedule is not None
    sheet = _new_sheet(book, document, "Schedule",
                       "Liability schedule: the points outstanding at the as-of by when they expire if not spent",
                       A=44, B=16, C=16)
    sheet.header(("expires", "points", "US$"))
    first = sheet.append(["past expiry, not yet expired (due now)", sheet.cell(schedule["due_now_points"], POINTS),
                          _money_formula(sheet, document, "B", sheet.row, signed=False)])
    for month in schedule["months"]:
        sheet.append([sheet.cell(month_start(month["month"]), MONTH), sheet.cell(month["points"], POINTS),
                      _money_formula(sheet, document, "B", sheet.row, signed=False)])
    last = sheet.append(["later, or never", sheet.cell(schedule["later_points"], POINTS),
                         _money_formula(sheet, document, "B", sheet.row, signed=False)])
    total = sheet.append([sheet.cell("total", bold=True), sheet.cell(f"=SUM(B{first}:B{last})", POINTS, bold=True),
                          _money_formula(sheet, document, "B", sheet.row, signed=False)])
    stored = sheet.append(["outstanding at the as-of (stored)", sheet.cell(schedule["outstanding_points"], POINTS)])
    sheet.append(["total less outstanding (0: every point is scheduled)", sheet.cell(f"=B{total}-B{stored}", SIGNED)])
    breakage = document.summary.get("breakage")
    if breakage:
        sheet.append()
        sheet.append([sheet.cell("Breakage, the 12 months before the as-of", bold=True),
                      sheet.cell(instant(breakage["from"]), INSTANT), sheet.cell(instant(breakage["to"]), INSTANT)])
        expired = sheet.append(["points expired", sheet.cell(breakage["expired_points"], POINTS)])
        issued = sheet.append(["points issued", sheet.cell(breakage["issued_points"], POINTS)])
        sheet.append(["breakage rate (expired ÷ issued)",
                      sheet.cell(f"=IF(B{issued}=0,\"\",B{expired}/B{issued})", RATE)])


def _journal_sheet(book: Workbook, document: Document) -> None:
    journal = document.summary.get("journal") or []
    sheet = _new_sheet(book, document, "Journal", "Journal: double-entry lines in money, debits equal credits",
                       frozen=True, A=12, B=24, C=14, D=14, E=14, F=70)
    sheet.header(("date", "account", "debit", "credit", "points", "memo"))
    first = sheet.row
    for line in journal:
        sheet.append([sheet.cell(datetime.fromisoformat(line["date"]), DAY), line["account"],
                      sheet.cell(Decimal(line["debit"]), USD), sheet.cell(Decimal(line["credit"]), USD),
                      sheet.cell(line["points"], SIGNED), line["memo"]])
    last = sheet.row - 1
    total = sheet.append([sheet.cell("total", bold=True), None,
                          sheet.cell(f"=SUM(C{first}:C{last})", USD, bold=True),
                          sheet.cell(f"=SUM(D{first}:D{last})", USD, bold=True)])
    sheet.append(["debits less credits (0: balanced)", None, sheet.cell(f"=C{total}-D{total}", SIGNED_USD)])
