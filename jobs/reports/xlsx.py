"""The finance report as an xlsx workbook (openpyxl, write-only: the Discrepancies sheet streams
every row, so memory stays flat). Sheets Summary, Roll-forward, Discrepancies, Monthly; each starts
with the as-of and the run id; numbers are numeric cells."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable

from jobs.reconcile_summary import KINDS
from jobs.reports.files import CSV_HEADER as DISCREPANCY_HEADER
from jobs.reports.document import Document, roll_forward_lines, when

POINTS = "#,##0;-#,##0"
SIGNED = "+#,##0;-#,##0;0"
USD = '"$"#,##0.00;-"$"#,##0.00'
HEADER_ROW = 4  # rows 1-2: as-of and run; 3 empty; 4 the header


FINDINGS_HEADER = ("kind", "user_id", "referred_user_id", "level", "month", "reward_key", "points", "detail")


def write(document: Document, discrepancies: Iterable[Any], path: Path, findings: Iterable[Any] = ()) -> None:
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    _summary_sheet(book, document)
    _roll_forward_sheet(book, document)
    _discrepancies_sheet(book, document, discrepancies)
    _monthly_sheet(book, document)
    if document.summary.get("findings") is not None:
        _findings_sheet(book, document, findings)
    book.save(path)


def _findings_sheet(book: Any, document: Document, findings: Iterable[Any]) -> None:
    sheet = book.create_sheet("Findings")
    sheet.freeze_panes = f"A{HEADER_ROW + 1}"
    sheet.column_dimensions["A"].width = 22
    sheet.column_dimensions["B"].width = 38
    sheet.column_dimensions["H"].width = 90
    _heading(sheet, document, "Rules audit: every finding (docs/rules.md, the invariant)")
    _header(sheet, FINDINGS_HEADER)
    for row in findings:
        sheet.append([row.kind, str(row.user_id) if row.user_id else None,
                      str(row.referred_user_id) if row.referred_user_id else None, row.level, row.month,
                      row.reward_key, _cell(sheet, row.points, SIGNED) if row.points is not None else None, row.detail])


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
        if "outstanding_points" in unrecovered:
            cash = unrecovered.get("money") or {}
            rows += [("Points unrecovered dated on or before the previous as-of",
                      unrecovered["late"]["unrecovered_points"], POINTS),
                     ("Points expired before their clawback", unrecovered["expired_points"], POINTS),
                     ("Unrecovered outstanding at the previous reconcile", unrecovered["outstanding_opening"], POINTS),
                     ("Points recovered", unrecovered["recovered_points"], POINTS),
                     ("Unrecovered outstanding at the as-of", unrecovered["outstanding_points"], POINTS),
                     ("Unrecovered newly recorded (US$)", _usd(cash.get("unrecovered_usd")), USD),
                     ("Recovered (US$)", _usd(cash.get("recovered_usd")), USD),
                     ("Unrecovered outstanding (US$)", _usd(cash.get("outstanding_usd")), USD)]
    findings = s.get("findings")
    if findings is not None:
        rows += [("Rules audit findings", findings["total"], POINTS),
                 *((f"  {kind}", count, POINTS) for kind, count in findings["by_kind"].items())]
    for label, value, number_format in rows:
        sheet.append([label, _cell(sheet, value, number_format)])


def _usd(amount: str | None) -> Decimal | None:
    return None if amount is None else Decimal(amount)


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
