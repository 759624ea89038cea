"""The finance report's document, what every format of it draws: the run's stored summary, its largest
discrepancies, the earlier reconciles charted, the findings shown; the roll-forward's lines, built once
here for every format (a line's sign is in its value only); and how a number or an instant is written.

`finance.py` gathers the document and renders it (as HTML, with `charts.py`; as a workbook, with
`xlsx.py`); `charts.py` and `xlsx.py` draw from this module alone, never from `finance.py`, so the
report's modules form no circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from core import clock
from jobs.reconcile_summary import MONTHS_CHARTED

RECENT_RECONCILES = 30


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
        first = months_before(self.as_of, MONTHS_CHARTED)
        return [point for point in self.history if point.as_of > first]

    @property
    def last_30(self) -> list[ReconcilePoint]:
        return self.history[-RECENT_RECONCILES:]


def months_before(moment: datetime, months: int) -> datetime:
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
