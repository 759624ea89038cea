"""The finance report of a reconcile run: one document, rendered as HTML (Jinja2, charts as inline SVG
drawn by pygal, `charts.py`) and as an xlsx workbook (openpyxl, `xlsx.py`).

Every number comes from the run's stored JSON summary or from the reconcile tables (the discrepancies
of the run, the liability, drift and discrepancy count of earlier successful reconciles), so the HTML,
the workbook, the table and the JSON agree with each other and with the database. The document, its
roll-forward's lines and how numbers are written are `document.py`'s, which the charts and the workbook
read too (none of them imports this module).
"""
from __future__ import annotations

from datetime import timezone
from functools import cache
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import Connection

from core.sql import Queries
from jobs.reconcile_summary import KINDS, MONTHS_CHARTED
from jobs.reports.document import (RECENT_RECONCILES, Document, ReconcilePoint, points, roll_forward_lines, signed,
                                   usd, when)

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


def gather(conn: Connection, summary: dict[str, Any], *, run_status: str | None) -> Document:
    """The report of the run whose summary this is (recorded already, or about to be)."""
    run_id, as_of = int(summary["run_id"]), summary["as_of"]
    largest = list(conn.execute(_queries["largest_discrepancies"], {"run_id": run_id, "limit": LARGEST_SHOWN}))
    earlier = conn.execute(_queries["earlier_reconciles"], {
        "run_id": run_id, "as_of": as_of, "months": MONTHS_CHARTED, "recent": RECENT_RECONCILES - 1})
    history = [ReconcilePoint(row.run_id, row.as_of.astimezone(timezone.utc), int(row.closing_balance),
                              int(row.net_drift), int(row.discrepancies)) for row in earlier]
    document = Document(summary=summary, run_status=run_status, largest=largest, history=history,
                        findings=list(conn.execute(_queries["findings_shown"], {"run_id": run_id,
                                                                               "limit": FINDINGS_SHOWN}))
                        if summary.get("findings") and summary["findings"]["total"] else [])
    history.append(ReconcilePoint(run_id, document.as_of, int(summary["roll_forward"]["closing"]),
                                  int(summary["net_drift"]), int(summary["discrepancies"]["total"])))
    return document


def all_discrepancies(conn: Connection, run_id: int) -> Iterable[Any]:
    return conn.execute(_queries["all_discrepancies"], {"run_id": run_id},
                        execution_options={"stream_results": True, "max_row_buffer": 1000})


# ── HTML ─────────────────────────────────────────────────────────────────────

TEMPLATE = "finance_report.html.j2"


@cache
def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(points=points, signed=signed, usd=usd, when=when)
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
        s=summary, roll=summary["roll_forward"], lines=roll_forward_lines(summary["roll_forward"]),
        money=summary.get("outstanding_money"), kinds=KINDS, kind_meanings=KIND_MEANINGS,
        largest=document.largest, largest_shown=LARGEST_SHOWN, charts=charts, run_status=document.run_status,
        unrecovered=summary.get("unrecovered_clawbacks"), monthly=summary.get("monthly", []),
        findings=summary.get("findings"), finding_rows=document.findings,
        history_count=len(document.history),
    ))


# ── xlsx ─────────────────────────────────────────────────────────────────────

def write_xlsx(conn: Connection, document: Document, path: Path) -> None:
    from jobs.reports import xlsx

    findings = (conn.execute(_queries["all_findings"], {"run_id": document.run_id},
                             execution_options={"stream_results": True, "max_row_buffer": 1000})
                if document.summary.get("findings") else ())
    xlsx.write(document, all_discrepancies(conn, document.run_id), path, findings)
