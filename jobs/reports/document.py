"""The finance report's document, what every format of it draws: a reconcile's stored summary (with its
largest discrepancies, the earlier reconciles charted, the findings shown) or a closed month's period
document; the roll-forward's lines, built once here for every format; and how a number or an instant
is written.

One sign convention in every table: a line is signed as it moves the liability (issued +, spent,
expired, clawed back and recovered −); opening and closing are balances. Every line says in words
what it is (`meaning`), carries its money beside its points, and the previous period's value beside
its own.

`finance.py` gathers the document and renders it (as HTML, with `charts.py`; as a workbook, with
`xlsx.py`); `charts.py` and `xlsx.py` draw from this module alone, never from `finance.py`, so the
report's modules form no circle.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Mapping, Protocol, Sequence, TypedDict, cast
from uuid import UUID

from core import clock
from jobs.journal import JournalLine
# the JSON shapes, re-exported under their names here (the renderers' imports)
from jobs.liability import Breakage as Breakage, LiabilitySchedule as LiabilitySchedule, ScheduleMonth as ScheduleMonth
from jobs.period_close import (PreviousPeriod as PreviousPeriod, RestatedLine as RestatedLine,
                               RestatedMonth as RestatedMonth, Restatements as Restatements)
from jobs.reconcile_summary import (MONTHS_CHARTED, Counts as Counts, JsonValue as JsonValue,
                                    LateCommitted as LateCommitted, Money as Money, MonthlyLine as MonthlyLine,
                                    RollForwardData as RollForwardData, UnrecoveredClawbacks as UnrecoveredClawbacks,
                                    UnrecoveredLate as UnrecoveredLate, UnrecoveredMoney as UnrecoveredMoney,
                                    usd as money_of)

RECENT_RECONCILES = 30
PERIOD_CLOSE = "period close"  # the `report` of a closed month's document (contract section 2)

# ── the shapes the renderers read (JSON as stored; declared by the modules that make them) ──

# A reconcile's summary (jobs/reconcile_summary.Summary) or a closed month's period document: every key
# a renderer may read; which are present depends on `report`.
ReportData = TypedDict("ReportData", {
    "report": str, "run_id": int, "as_of": str, "verdict": str, "outstanding_points": int,
    "outstanding_money": Money | None, "users_checked": int, "ledger_rows": int,
    "discrepancies": Counts, "ledger": dict[str, int], "cache": dict[str, int], "net_drift": int,
    "repair_requested": bool, "repaired": int, "roll_forward": RollForwardData,
    "unrecovered_clawbacks": UnrecoveredClawbacks | None, "findings": Counts | None,
    "monthly": list[MonthlyLine], "after_as_of": dict[str, int], "seen": Mapping[str, JsonValue],
    "files": dict[str, str] | None, "restatements": Restatements | None, "liability_schedule": LiabilitySchedule | None,
    "breakage": Breakage | None, "journal": list[JournalLine] | None, "journal_file": str | None,
    # a period document's own
    "period": str, "from": str, "to": str, "status": str, "signed_by": str | None, "signed_at": str | None,
    "previous": PreviousPeriod | None, "digest": Mapping[str, JsonValue],
}, total=False)


def report_data(stored: Mapping[str, object]) -> ReportData:
    """A summary or period document as stored (JSON) read as the shape the renderers know."""
    return cast(ReportData, stored)


class DiscrepancyRow(Protocol):
    """A row of reconciliation_discrepancies as the report reads it."""

    @property
    def user_id(self) -> UUID | str: ...
    @property
    def kinds(self) -> Sequence[str]: ...
    @property
    def cached_balance(self) -> int | None: ...
    @property
    def ledger_balance(self) -> int: ...
    @property
    def drift(self) -> int: ...
    @property
    def cached_total_earned(self) -> int | None: ...
    @property
    def ledger_total_earned(self) -> int: ...
    @property
    def cached_total_spent(self) -> int | None: ...
    @property
    def ledger_total_spent(self) -> int: ...


class FindingRow(Protocol):
    """A row of reconciliation_findings as the report reads it."""

    @property
    def kind(self) -> str: ...
    @property
    def user_id(self) -> UUID | str | None: ...
    @property
    def referred_user_id(self) -> UUID | str | None: ...
    @property
    def level(self) -> int | None: ...
    @property
    def month(self) -> str | None: ...
    @property
    def reward_key(self) -> str | None: ...
    @property
    def points(self) -> int | None: ...
    @property
    def detail(self) -> str | None: ...


# ── the document ──────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Line:
    """One roll-forward line, signed as it moves the liability (opening and closing are balances).

    `key` is the contract's line key ("issued.REFERRAL_RECURRING", "closing"), by which the previous
    period and the restatements match; `path` is where the value is in the stored document
    (`roll_forward.spent.REDEMPTION_QUOTA`), None for a line computed here (a subtotal, a line the
    previous period had and this one has not)."""

    role: str  # opening | issued | used | late | subtotal | expected | closing | gap
    key: str
    label: str
    meaning: str
    value: int
    money: str | None
    previous: int | None = None
    previous_money: str | None = None
    code: str = ""  # the ledger type (or stored key) in small print
    path: str | None = None

    @property
    def emphasis(self) -> str:
        return {"opening": "total", "closing": "total", "subtotal": "subtotal", "expected": "subtotal",
                "gap": "gap"}.get(self.role, "")

    @property
    def balance(self) -> bool:
        """Opening and closing are balances, written without a sign; every other line is a movement."""
        return self.role in ("opening", "closing", "expected")


@dataclass(frozen=True)
class ReconcilePoint:
    run_id: int
    as_of: datetime
    liability: int
    net_drift: int
    discrepancies: int


@dataclass(frozen=True)
class Previous:
    """The period before, beside this one: its roll-forward and what to call it."""

    label: str  # "April 2026", "run 41, as of 2026-05-01 01:00:00 UTC"
    roll_forward: RollForwardData
    heading: str = "Previous"  # its column's heading: "April 2026", "Run 41"


@dataclass
class Document:
    summary: ReportData
    run_status: str | None
    largest: Sequence[DiscrepancyRow]
    history: list[ReconcilePoint] = field(default_factory=list)
    findings: Sequence[FindingRow] = field(default_factory=list)  # the rules audit's first FINDINGS_SHOWN findings
    previous: Previous | None = None

    @property
    def is_period(self) -> bool:
        return self.summary.get("report") == PERIOD_CLOSE

    @property
    def run_id(self) -> int | None:
        return None if self.is_period else int(self.summary["run_id"])

    @property
    def as_of(self) -> datetime:
        return datetime.fromisoformat(self.summary["as_of"]).astimezone(timezone.utc)

    @property
    def points_per_usd(self) -> Decimal | None:
        money = self.summary.get("outstanding_money")
        return Decimal(money["points_per_usd"]) if money else None

    @property
    def title(self) -> str:
        if self.is_period:
            return f"Period close {self.summary['period']} ({month_name(self.summary['period'])})"
        return f"Points reconciliation, run {self.run_id}"

    @property
    def lines(self) -> list[Line]:
        previous = self.previous.roll_forward if self.previous else None
        return roll_forward_lines(self.summary["roll_forward"], points_per_usd=self.points_per_usd,
                                  previous=previous, period=self.is_period)

    @property
    def covers(self) -> str:
        """What period the roll-forward covers, in words."""
        roll = self.summary["roll_forward"]
        if self.is_period:
            return (f"{month_name(self.summary['period'])}: rows dated from {when(self.summary['from'])} "
                    f"to before {when(self.summary['to'])}")
        if roll.get("period_after"):
            start = datetime.fromisoformat(str(roll["period_after"]))
            days = (self.as_of - start).total_seconds() / 86400
            return (f"rows dated after {when(start)} (run {roll['previous_run_id']}) up to {when(self.as_of)}: "
                    f"{days:,.1f} days")
        return (f"the whole ledger up to {when(self.as_of)}: no earlier reconcile, so this first roll-forward "
                "covers every row ever written, however many years")

    @property
    def last_12_months(self) -> list[ReconcilePoint]:
        first = months_before(self.as_of, MONTHS_CHARTED)
        return [point for point in self.history if point.as_of > first]

    @property
    def last_30(self) -> list[ReconcilePoint]:
        return self.history[-RECENT_RECONCILES:]

    def money(self, points: int | None) -> str | None:
        ppu = self.points_per_usd
        return None if points is None or not ppu else money_of(points, ppu)


def months_before(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    day = min(moment.day, 28)  # close enough for "over the last 12 months" on a chart's x axis
    return moment.replace(year=year, month=month + 1, day=day)


MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")


def month_name(period: str) -> str:
    """`2026-05` -> `May 2026`."""
    year, month = period.split("-")
    return f"{MONTH_NAMES[int(month) - 1]} {year}"


# ── what each line is, in words ───────────────────────────────────────────────

ISSUED = {
    "REFERRAL_RECURRING": ("Recurring referral rewards",
                           "points earned by referrers on their referred users' monthly payments"),
    "REFERRAL_L2": ("Level-2 referral rewards",
                    "points earned by the referrer's own referrer on the referred users' monthly payments"),
    "REFERRAL_FIRST_PAYMENT": ("First-payment referral rewards",
                               "points earned by referrers when a referred user pays for the first time"),
    "REFERRAL_WELCOME": ("Welcome points", "points given to referred users when they activate a plan"),
    "ADMIN_GRANT": ("Grants", "points granted by an administrator (goodwill, promotions, corrections upward)"),
}
SPENT = {
    "ADMIN_GRANT": ("Adjustments (negative grants)",
                    "points an administrator took off a balance: a correction, not a redemption"),
    "REDEMPTION_QUOTA": ("Redeemed for quota", "points users redeemed for quota"),
    "REDEMPTION_UNLOCK": ("Redeemed for unlocks", "points users redeemed to unlock a feature"),
}


def issued_words(kind: str) -> tuple[str, str]:
    return ISSUED.get(kind) or (f"Other credits ({_words(kind)})",
                                f"points credited to users as {kind}, a ledger type with no description here")


def spent_words(kind: str) -> tuple[str, str]:
    if kind in SPENT:
        return SPENT[kind]
    if kind.startswith("REDEMPTION_"):
        what = _words(kind.removeprefix("REDEMPTION_"))
        return f"Redeemed for {what}", f"points users redeemed for {what}"
    return (f"Other debits ({_words(kind)})",
            f"points debited from users as {kind}, a ledger type with no description here")


def _words(kind: str) -> str:
    return kind.replace("_", " ").lower()


def line_words(key: str, value: int = 0) -> tuple[str, str]:
    """The label and meaning of a line key ("issued.REFERRAL_RECURRING", "expired", "closing"); a late
    line's words depend on its sign (late credits or late debits of its type)."""
    section, _, kind = key.partition(".")
    if section == "issued":
        return issued_words(kind)
    if section == "spent":
        return spent_words(kind)
    if section == "late" and kind:
        if kind in FIXED_DEBITS:
            label, meaning = FIXED[FIXED_DEBITS[kind]]
        else:
            label, meaning = issued_words(kind) if value >= 0 else spent_words(kind)
        return (f"Late: {label[0].lower()}{label[1:]}",
                f"{meaning}; dated before this period, committed after the report that closed it")
    return FIXED[key]


FIXED_DEBITS = {"EXPIRY": "expired", "REFERRAL_CLAWBACK": "clawed_back", "RECOVERY": "recovered"}
FIXED = {
    "opening": ("Opening liability", "points users held at the start of the period"),
    "issued_total": ("Total issued", "every credit of the period: what the liability grew by"),
    "expired": ("Expired", "points that reached their expiry date unspent and were taken back (breakage)"),
    "clawed_back": ("Clawed back", "rewards reversed because the payment they were paid on was refunded or "
                                   "charged back"),
    "recovered": ("Recovered", "clawbacks not fully taken at first, taken later from the referrer's new points"),
    "used_total": ("Total used up", "spent + expired + clawed back + recovered: what the liability fell by"),
    "late": ("Late-committed rows", "rows dated before this period that the previous report could not see yet "
                                    "(committed after it ran)"),
    "expected": ("Expected closing", "opening + total issued + total used up + late rows, each with its sign"),
    "closing": ("Closing liability", "points users hold at the end of the period: the ledger balance at the as-of"),
    "gap": ("Unexplained gap", "closing less expected closing: should be 0"),
}
CODES = {"expired": "EXPIRY", "clawed_back": "REFERRAL_CLAWBACK",
         "recovered": "REFERRAL_CLAWBACK (recover: keys)"}


# ── the roll-forward's lines, for every format ───────────────────────────────

def line_values(roll: RollForwardData) -> dict[str, int]:
    """Every line of a roll-forward by its contract key, signed as it moves the liability."""
    values = {"opening": int(roll["opening"])}
    values |= {f"issued.{kind}": int(points) for kind, points in roll["issued"].items()}
    values |= {f"spent.{kind}": -int(points) for kind, points in roll["spent"].items()}
    values |= {"expired": -int(roll["expired"]), "clawed_back": -int(roll.get("clawed_back", 0)),
               "recovered": -int(roll.get("recovered", 0))}
    by_type = roll.get("late_by_type")
    late = roll.get("late_committed", {"rows": 0, "points": 0})
    if by_type:
        values |= {f"late.{kind}": int(points) for kind, points in by_type.items()}
    elif late["points"] or late["rows"] or roll.get("previous_run_id"):
        values["late"] = int(late["points"])
    values["closing"] = int(roll["closing"])
    return values


@dataclass(frozen=True)
class _Lines:
    """Builds the lines of one roll-forward with its money and, when there is one, the previous period's."""

    now: dict[str, int]
    before: dict[str, int] | None
    points_per_usd: Decimal | None

    def prior(self, key: str) -> int | None:
        return None if self.before is None else self.before.get(key, 0)

    def keys(self, section: str) -> list[str]:
        return sorted({key for key in (*self.now, *(self.before or {})) if key.startswith(section + ".")})

    def make(self, role: str, key: str, value: int, previous: int | None, *, path: str | None,
             meaning: str | None = None) -> Line:
        label, words = line_words(key, value)
        code = key.partition(".")[2] or CODES.get(key, "")
        return Line(role, key, label, meaning or words, value, _money(value, self.points_per_usd), previous,
                    _money(previous, self.points_per_usd), code, path)

    def movement(self, role: str, key: str, path: str) -> Line:
        return self.make(role, key, self.now.get(key, 0), self.prior(key), path=path if key in self.now else None)

    def total(self, role: str, key: str, parts: Sequence[Line], path: str | None = None) -> Line:
        before = None if self.before is None else sum(part.previous or 0 for part in parts)
        return self.make(role, key, sum(part.value for part in parts), before, path=path)


def roll_forward_lines(roll: RollForwardData, *, points_per_usd: Decimal | None = None,
                       previous: RollForwardData | None = None, period: bool = False) -> list[Line]:
    """opening; issued by type, total issued; spent by type, expired, clawed back, recovered, total used
    up; late rows; expected closing; closing (and a gap): each with its money and the previous period's."""
    build = _Lines(line_values(roll), line_values(previous) if previous else None, points_per_usd)
    opening = build.make("opening", "opening", build.now["opening"], build.prior("opening"),
                         path="roll_forward.opening", meaning=_opening_meaning(roll, period))
    issued = [build.movement("issued", key, f"roll_forward.issued.{key[7:]}") for key in build.keys("issued")]
    used = [build.movement("used", key, f"roll_forward.spent.{key[6:]}") for key in build.keys("spent")]
    used += [build.movement("used", key, f"roll_forward.{key}") for key in ("expired", "clawed_back", "recovered")]
    late_keys = build.keys("late") + (["late"] if "late" in build.now or "late" in (build.before or {}) else [])
    late = [build.movement("late", key, f"roll_forward.late_by_type.{key[5:]}" if "." in key
                           else "roll_forward.late_committed.points") for key in late_keys]
    issued_total = build.total("subtotal", "issued_total", issued)
    used_total = build.total("subtotal", "used_total", used)
    expected = build.total("expected", "expected", [opening, issued_total, used_total, *late],
                           path="roll_forward.expected_closing")
    closing = build.movement("closing", "closing", "roll_forward.closing")
    lines = [opening, *issued, issued_total, *used, used_total, *late, expected, closing]
    if not roll.get("identity_holds", True):
        gap = int(roll["gap"])
        lines.append(Line("gap", "gap", "Unexplained gap", str(roll.get("gap_explanation") or FIXED["gap"][1]),
                          gap, _money(gap, points_per_usd), path="roll_forward.gap"))
    return lines


def _opening_meaning(roll: RollForwardData, period: bool) -> str:
    if period:
        return "points users held at the month's first instant: the ledger dated before it"
    if roll.get("previous_run_id"):
        return f"the closing of reconcile run {roll['previous_run_id']}, as of {when(roll.get('period_after'))}"
    return "no earlier reconcile: the ledger starts at 0"


def _money(points: int | None, points_per_usd: Decimal | None) -> str | None:
    return None if points is None or not points_per_usd else money_of(points, points_per_usd)


def monthly_rows(monthly: Sequence[MonthlyLine]) -> list[dict[str, int | str]]:
    """The monthly table signed as the roll-forward signs: issued +, spent / expired / clawed back −,
    and each month's net change of the liability."""
    rows: list[dict[str, int | str]] = []
    for month in monthly:
        signed = {"issued": int(month["issued"]), "spent": -int(month["spent"]), "expired": -int(month["expired"]),
                  "clawed_back": -int(month["clawed_back"])}
        rows.append({"month": month["month"], **signed, "net": sum(signed.values())})
    return rows


def restated_label(key: str) -> str:
    """A restated line in words: `Recurring referral rewards (issued.REFERRAL_RECURRING)`."""
    try:
        return line_words(key)[0]
    except KeyError:
        return key


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
    return (MINUS if value < 0 else "") + f"${abs(value):,.2f}"


def signed_usd(amount: str | Decimal | None) -> str:
    """Money of a movement, signed as its points are: `+$12.00`, `−$3.10`, `$0.00`."""
    if amount is None:
        return "n/a"
    value = Decimal(amount)
    return ("+" if value > 0 else MINUS if value < 0 else "") + f"${abs(value):,.2f}"


def when(moment: str | datetime | None) -> str:
    """`2026-06-01 01:00:00 UTC`: an instant as the finance report writes it."""
    return clock.when(moment, zone=" UTC")


def short_id(value: object, keep: int = 8) -> str:
    """A long id shortened for a narrow screen (the whole id goes in a tooltip beside it)."""
    text = str(value)
    return text if len(text) <= keep + 1 else text[:keep] + "\u2026"
