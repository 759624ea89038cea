"""The finance report of a reconcile run or of a closed month: one document, rendered as HTML (Jinja2,
charts as inline SVG drawn by pygal, `charts.py`) and as an xlsx workbook (openpyxl, `xlsx.py`).

A reconcile's report: `gather(conn, summary, run_status=…)`, then `render_html` / `write_xlsx`. A closed
month's: `period_report(document)` (the period document as signed, contract section 2; it needs no
database: a signed month renders the same forever), then the same two renderers.

Every number comes from the run's stored JSON summary or from the reconcile tables (the discrepancies
of the run, the liability, drift and discrepancy count of earlier successful reconciles), so the HTML,
the workbook, the table and the JSON agree with each other and with the database. The document, its
roll-forward's lines and how numbers are written are `document.py`'s, which the charts and the workbook
read too (none of them imports this module).
"""
from __future__ import annotations

from datetime import timezone
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, cast

from sqlalchemy import Connection

from core.sql import Queries
from jobs.reconcile_summary import KINDS, MONTHS_CHARTED
from jobs.reports.document import (RECENT_RECONCILES, DiscrepancyRow, Document, FindingRow, Previous, ReconcilePoint,
                                   ReportData, RollForwardData, month_name, monthly_rows, points, report_data,
                                   restated_label, short_id, signed, signed_usd, usd, when)

if TYPE_CHECKING:
    from jinja2 import Environment

_queries = Queries(__file__)
LARGEST_SHOWN = 50
FINDINGS_SHOWN = 200  # every finding is in the findings CSV and the workbook
KIND_MEANINGS = {
    "MISSING_BALANCE": "ledger rows but no cache row",
    "ORPHAN_BALANCE": "a nonzero cache row without ledger rows",
    "BALANCE_MISMATCH": "cached balance differs from the ledger",
    "EARNED_MISMATCH": "cached total credits differ from the ledger",
    "SPENT_MISMATCH": "cached total debits differ from the ledger",
    "CACHE_INCONSISTENT": "cache balance is not its credits plus its debits",
    "NEGATIVE_BALANCE": "ledger balance below zero",
}


def gather(conn: Connection, stored: Mapping[str, object], *, run_status: str | None) -> Document:
    """The report of the run whose summary this is (recorded already, or about to be)."""
    summary = report_data(stored)
    run_id, as_of = int(summary["run_id"]), summary["as_of"]
    largest = cast(list[DiscrepancyRow], list(conn.execute(_queries["largest_discrepancies"],
                                                           {"run_id": run_id, "limit": LARGEST_SHOWN})))
    earlier = conn.execute(_queries["earlier_reconciles"], {
        "run_id": run_id, "as_of": as_of, "months": MONTHS_CHARTED, "recent": RECENT_RECONCILES - 1})
    history = [ReconcilePoint(row.run_id, row.as_of.astimezone(timezone.utc), int(row.closing_balance),
                              int(row.net_drift), int(row.discrepancies)) for row in earlier]
    findings = summary.get("findings")
    shown = (cast(list[FindingRow], list(conn.execute(_queries["findings_shown"],
                                                      {"run_id": run_id, "limit": FINDINGS_SHOWN})))
             if findings and findings["total"] else [])
    document = Document(summary=summary, run_status=run_status, largest=largest, history=history, findings=shown,
                        previous=_previous_reconcile(conn, summary["roll_forward"]))
    history.append(ReconcilePoint(run_id, document.as_of, int(summary["roll_forward"]["closing"]),
                                  int(summary["net_drift"]), int(summary["discrepancies"]["total"])))
    return document


def _previous_reconcile(conn: Connection, roll: RollForwardData) -> Previous | None:
    """The roll-forward of the reconcile this one continues (its opening is that one's closing), from
    its stored summary; None for the first, or a summary stored without one."""
    run_id = roll.get("previous_run_id")
    if not run_id:
        return None
    stored = conn.execute(_queries["stored_summary"], {"run_id": run_id}).first()
    if stored is None or not stored.summary or "roll_forward" not in stored.summary:
        return None
    return Previous(label=f"run {run_id}, as of {when(stored.as_of)}",
                    roll_forward=cast(RollForwardData, stored.summary["roll_forward"]), heading=f"Run {run_id}")


def period_report(stored: Mapping[str, object]) -> Document:
    """A closed month's report (contract section 2): everything it shows is in the document itself."""
    document = report_data(stored)
    previous = document.get("previous")
    return Document(summary=document, run_status=document.get("status"), largest=[],
                    previous=Previous(label=month_name(previous["period"]), roll_forward=previous["roll_forward"],
                                      heading=month_name(previous["period"])) if previous else None)


def all_discrepancies(conn: Connection, run_id: int) -> Iterable[DiscrepancyRow]:
    return cast(Iterable[DiscrepancyRow], conn.execute(
        _queries["all_discrepancies"], {"run_id": run_id},
        execution_options={"stream_results": True, "max_row_buffer": 1000}))


# ── HTML ─────────────────────────────────────────────────────────────────────

TEMPLATE = "finance_report.html.j2"


@cache
def _environment() -> Environment:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(points=points, signed=signed, usd=usd, signed_usd=signed_usd, when=when, short_id=short_id,
                       month_name=month_name, restated_label=restated_label)
    return env


def warm_up() -> None:
    """Import what the files are drawn with and compile the template: reconcile does it in a thread
    while the server reads the ledger (its own thread only waits then). A failure here is left to the
    real call to report."""
    try:
        import openpyxl  # noqa: F401
        import pygal  # noqa: F401

        _environment().get_template(TEMPLATE)
    except Exception:  # noqa: BLE001
        pass


def render_html(document: Document) -> str:
    """One self-contained HTML file: inline CSS, charts as inline SVG, no script, no other host."""
    from markupsafe import Markup

    from jobs.reports import charts as chart_svgs

    summary = document.summary
    charts = {name: Markup(svg) for name, svg in chart_svgs.all_charts(document).items()}
    return str(_environment().get_template(TEMPLATE).render(
        d=document, s=summary, roll=summary["roll_forward"], lines=document.lines,
        money=summary.get("outstanding_money"), kinds=KINDS, kind_meanings=KIND_MEANINGS,
        largest=document.largest, largest_shown=LARGEST_SHOWN, charts=charts, run_status=document.run_status,
        unrecovered=summary.get("unrecovered_clawbacks"), monthly=monthly_rows(summary.get("monthly", [])),
        findings=summary.get("findings"), finding_rows=document.findings,
        history_count=len(document.history), restatements=summary.get("restatements"),
        schedule=summary.get("liability_schedule"), breakage=summary.get("breakage"),
        journal=summary.get("journal"), journal_file=journal_file(summary), journal_totals=journal_totals(summary),
    ))


def journal_totals(summary: ReportData) -> dict[str, str]:
    """The journal's debits and credits, each summed (they balance)."""
    journal = summary.get("journal") or []
    return {side: str(sum((Decimal(line[side]) for line in journal), Decimal("0.00")))
            for side in ("debit", "credit")}


def journal_file(summary: ReportData) -> str | None:
    """The name of the journal CSV written beside the report, if any."""
    files = summary.get("files") or {}
    return summary.get("journal_file") or files.get("journal")


# ── xlsx ─────────────────────────────────────────────────────────────────────

def write_xlsx(conn: Connection | None, document: Document, path: Path) -> None:
    """The workbook of the document; a reconcile's streams every discrepancy and finding on `conn`
    (a closed month's needs no connection)."""
    from jobs.reports import xlsx

    run_id = document.run_id
    if conn is None or run_id is None:
        xlsx.write(document, (), path)
        return
    findings = (cast(Iterable[FindingRow], conn.execute(
        _queries["all_findings"], {"run_id": run_id}, execution_options={"stream_results": True,
                                                                         "max_row_buffer": 1000}))
        if document.summary.get("findings") else ())
    xlsx.write(document, all_discrepancies(conn, run_id), path, findings)
