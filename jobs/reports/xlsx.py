"""The finance report as an xlsx workbook (openpyxl, write-only: the Discrepancies sheet streams
every row, so memory stays flat). Sheets Summary, Roll-forward, Discrepancies, Monthly; each starts
with the as-of and the run id; numbers are numeric cells."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

from jobs.reconcile_summary import KINDS
from jobs.reports.files import CSV_HEADER as DISCREPANCY_HEADER
from jobs.reports.finance import Document, roll_forward_lines, when

POINTS = "#,##0;-#,##0"
SIGNED = "+#,##0;-#,##0;0"
USD = '"$"#,##0.00;-"$"#,##0.00'
HEADER_ROW = 4  # rows 1-2: as-of and run; 3 empty; 4 the header


def write(document: Document, discrepancies: Iterable[Any], path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    _summary_sheet(book, document)
    _roll_forward_sheet(book, document)
    _discrepancies_sheet(book, document, discrepancies)
    _monthly_sheet(book, document)
    book.save(path)


def _cell(sheet: Any, value: Any, number_format: str | None = None, bold: bool = False) -> Any:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font

    cell = WriteOnlyCell(sheet, value=value)
    if number_format:
        cell.number_format = number_format
    if bold:
        cell.font = Font(bold=True)
    return cell


def _heading(sheet: Any, document: Document, title: str) -> None:
    sheet.append([_cell(sheet, title, bold=True)])
    sheet.append(["As of", when(document.summary["as_of"]), "Run", document.run_id])
    sheet.append([])


def _header(sheet: Any, names: Iterable[str]) -> None:
    sheet.append([_cell(sheet, name, bold=True) for name in names])


def _summary_sheet(book: Any, document: Document) -> None:
    s = document.summary
    sheet = book.create_sheet("Summary")
    sheet.column_dimensions["A"].width = 44
    sheet.column_dimensions["B"].width = 20
    _heading(sheet, document, "Points reconciliation")
    _header(sheet, ("Item", "Value"))
    money = s.get("outstanding_money")
    rows: list[tuple[str, Any, str | None]] = [
        ("Status", s["verdict"], None),
        ("Outstanding liability (points)", s["outstanding_points"], POINTS),
        ("Outstanding liability (US$)", Decimal(money["usd"]) if money else None, USD),
        ("Points per US$", Decimal(money["points_per_usd"]) if money else None, None),
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
    for label, value, number_format in rows:
        sheet.append([label, _cell(sheet, value, number_format)])


def _roll_forward_sheet(book: Any, document: Document) -> None:
    roll = document.summary["roll_forward"]
    sheet = book.create_sheet("Roll-forward")
    sheet.column_dimensions["A"].width = 40
    sheet.column_dimensions["B"].width = 16
    sheet.column_dimensions["C"].width = 70
    _heading(sheet, document, "Roll-forward of the points liability")
    _header(sheet, ("Line", "Points", "Meaning"))
    for line in roll_forward_lines(roll):
        totals = line.role in ("opening", "expected", "closing")
        sheet.append([_cell(sheet, line.label, bold=totals), _cell(sheet, line.value, POINTS if totals else SIGNED, totals),
                      line.note])
    sheet.append([])
    sheet.append(["Identity", "holds" if roll["identity_holds"] else "GAP", roll["identity"]])


def _discrepancies_sheet(book: Any, document: Document, discrepancies: Iterable[Any]) -> None:
    sheet = book.create_sheet("Discrepancies")
    sheet.freeze_panes = f"A{HEADER_ROW + 1}"
    sheet.column_dimensions["A"].width = 38
    sheet.column_dimensions["B"].width = 34
    _heading(sheet, document, "Discrepant users (every one, by user id)")
    _header(sheet, DISCREPANCY_HEADER)
    last = HEADER_ROW
    for row in discrepancies:
        sheet.append([str(row.user_id), "|".join(row.kinds),
                      *(_cell(sheet, getattr(row, column), POINTS) for column in DISCREPANCY_HEADER[2:])])
        last += 1
    sheet.auto_filter.ref = f"A{HEADER_ROW}:I{last}"


def _monthly_sheet(book: Any, document: Document) -> None:
    sheet = book.create_sheet("Monthly")
    sheet.freeze_panes = f"A{HEADER_ROW + 1}"
    _heading(sheet, document, "Points per calendar month (UTC), last 12 months")
    _header(sheet, ("month", "issued", "spent", "expired", "clawed_back"))
    for month in document.summary.get("monthly", []):
        sheet.append([month["month"], *(_cell(sheet, month[key], POINTS)
                                        for key in ("issued", "spent", "expired", "clawed_back"))])
