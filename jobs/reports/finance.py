"""The finance report of a reconcile run: one document, rendered as HTML (Jinja2, charts as inline SVG
drawn by pygal, `charts.py`) and as an xlsx workbook (openpyxl, `xlsx.py`).

Every number comes from the run's stored JSON summary or from the reconcile tables (the discrepancies
of the run, the liability, drift and discrepancy count of earlier successful reconciles), so the HTML,
the workbook, the table and the JSON agree with each other and with the database. The roll-forward's
lines are built once here (`roll_forward_lines`) for every format; a line's sign is in its value only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import Connection

from core import clock
from core.sql import Queries
from jobs.reconcile_summary import KINDS, MONTHS_CHARTED

_queries = Queries(__file__)
LARGEST_SHOWN = 50
RECENT_RECONCILES = 30
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


@dataclass(frozen=True)
class Line:
    """One roll-forward line: `value` carries the sign (None for a line of words only)."""

    role: str  # opening | issued | spent | expired | clawed_back | recovered | late | expected | closing | gap
    label: str
    value: int | None
    key: str  # where the value is in the JSON summary, e.g. roll_forward.spent.REDEMPTION_QUOTA
    note: str = ""


@dataclass(frozen=True)
class ReconcilePoint:
    run_id: int
    as_of: datetime
    liability: int
    net_drift: int
    discrepancies: int


@dataclass
class Document:
    summary: dict[str, Any]
    run_status: str | None
    largest: list[Any]
    history: list[ReconcilePoint] = field(default_factory=list)
    findings: list[Any] = field(default_factory=list)  # the rules audit's first FINDINGS_SHOWN findings

    @property
    def run_id(self) -> int:
        return int(self.summary["run_id"])

    @property
    def as_of(self) -> datetime:
        return datetime.fromisoformat(self.summary["as_of"]).astimezone(timezone.utc)

    @property
    def last_12_months(self) -> list[ReconcilePoint]:
        first = _months_before(self.as_of, MONTHS_CHARTED)
        return [point for point in self.history if point.as_of > first]

    @property
    def last_30(self) -> list[ReconcilePoint]:
        return self.history[-RECENT_RECONCILES:]


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


def _months_before(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    day = min(moment.day, 28)  # close enough for "over the last 12 months" on a chart's x axis
    return moment.replace(year=year, month=month + 1, day=day)


# ── the roll-forward's lines, for every format ───────────────────────────────

def roll_forward_lines(roll: dict[str, Any]) -> list[Line]:
    """opening, issued by type, spent by type, expired, clawed back, late-committed, closing (and a gap)."""
    since = (f"closing of run {roll['previous_run_id']}, as of {when(roll['period_after'])}"
             if roll["previous_run_id"] else "no earlier reconcile: the ledger starts at 0")
    lines = [Line("opening", "Opening liability", roll["opening"], "roll_forward.opening", since)]
    lines += [Line("issued", f"Issued: {kind}", points, f"roll_forward.issued.{kind}")
              for kind, points in roll["issued"].items()]
    lines += [Line("spent", f"Spent: {kind}", -points, f"roll_forward.spent.{kind}")
              for kind, points in roll["spent"].items()]
    lines.append(Line("expired", "Expired (EXPIRY)", -roll["expired"], "roll_forward.expired"))
    lines.append(Line("clawed_back", "Clawed back (REFERRAL_CLAWBACK)", -roll.get("clawed_back", 0),
                      "roll_forward.clawed_back"))
    if "recovered" in roll:
        lines.append(Line("recovered", "Recovered (REFERRAL_CLAWBACK, recover: keys)", -roll["recovered"],
                          "roll_forward.recovered", "unrecovered clawback points taken back from a later balance"))
    late = roll.get("late_committed", {"rows": 0, "points": 0})
    by_type = roll.get("late_by_type")
    if by_type:  # the late rows by line type: they add up to the late-committed points
        lines += [Line("late", f"Late: {kind}", value, f"roll_forward.late_by_type.{kind}",
                       "dated on or before the previous as-of, first seen now")
                  for kind, value in by_type.items()]
    else:
        lines.append(Line("late", "Late-committed rows", late["points"], "roll_forward.late_committed.points",
                          f"{late['rows']:,} rows dated on or before the previous as-of, committed after that run"))
    lines.append(Line("expected", "Expected closing", roll["expected_closing"], "roll_forward.expected_closing"))
    lines.append(Line("closing", "Closing liability", roll["closing"], "roll_forward.closing",
                      "ledger balance dated at or before the as-of"))
    if not roll["identity_holds"]:
        lines.append(Line("gap", "Unexplained gap", roll["gap"], "roll_forward.gap", roll["gap_explanation"] or ""))
    return lines


# ── formatting ───────────────────────────────────────────────────────────────

MINUS = "\u2212"


def points(value: int | None) -> str:
    return "" if value is None else f"{value:,}".replace("-", MINUS)


def signed(value: int) -> str:
    return f"{value:+,}".replace("-", MINUS) if value else "0"


def usd(amount: str | Decimal | None) -> str:
    if amount is None:
        return "n/a (REWARDS_POINTS_PER_USD is 0)"
    value = Decimal(amount)
    return ("\u2212" if value < 0 else "") + f"${abs(value):,.2f}"


def when(moment: str | datetime | None) -> str:
    """`2026-06-01 01:00:00 UTC`: an instant as the finance report writes it."""
    return clock.when(moment, zone=" UTC")


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
    return _environment().get_template(TEMPLATE).render(
        s=summary, roll=summary["roll_forward"], lines=roll_forward_lines(summary["roll_forward"]),
        money=summary.get("outstanding_money"), kinds=KINDS, kind_meanings=KIND_MEANINGS,
        largest=document.largest, largest_shown=LARGEST_SHOWN, charts=charts, run_status=document.run_status,
        unrecovered=summary.get("unrecovered_clawbacks"), monthly=summary.get("monthly", []),
        findings=summary.get("findings"), finding_rows=document.findings,
        history_count=len(document.history),
    )


# ── xlsx ─────────────────────────────────────────────────────────────────────

def write_xlsx(conn: Connection, document: Document, path: Path) -> None:
    from jobs.reports import xlsx

    findings = (conn.execute(_queries["all_findings"], {"run_id": document.run_id},
                             execution_options={"stream_results": True, "max_row_buffer": 1000})
                if document.summary.get("findings") else ())
    xlsx.write(document, all_discrepancies(conn, document.run_id), path, findings)
