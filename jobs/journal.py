"""The journal: a roll-forward's movements as double-entry lines in money, for the accounting system.

Pure functions, no database. Each movement line of a roll-forward (`issued.<TYPE>`, `spent.<TYPE>`,
`expired`, `clawed_back`, `recovered`, `late.<TYPE>`) becomes two journal lines on the same date: one on
the points liability ("Points liability") and one on the ledger type's counter-account, the same amount
on opposite sides. A line that raises the liability (issued, a late credit) credits the liability and
debits the counter-account (an expense); a line that lowers it (spent, expired, clawed back, recovered,
a late debit) debits the liability and credits the counter-account (redemptions, breakage income, the
referral expense reversed). So debits equal credits line by line, and the liability account's lines sum,
in points and in money, to the roll-forward's movements (closing - opening).

The counter-account of a ledger type is `REWARDS_JOURNAL_ACCOUNTS`'s (`TYPE=Account name` pairs) or
the default: `REDEMPTION_*` "Redemptions", `EXPIRY` "Breakage income", `REFERRAL_*` (clawbacks
included) and recoveries "Referral expense", any other type (grants) "Promotional expense".
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Mapping, TypedDict

if TYPE_CHECKING:  # it imports this module's journal_lines
    from jobs.reconcile_summary import RollForwardData

LIABILITY = "Points liability"
HEADER = ("date", "account", "debit", "credit", "points", "memo")
EXPIRY = "EXPIRY"
CLAWBACK = "REFERRAL_CLAWBACK"
RECOVERY = "RECOVERY"  # the roll-forward's line of REFERRAL_CLAWBACK rows keyed recover:…
TYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,39}")  # a ledger type (VARCHAR(40)), or RECOVERY


class JournalLine(TypedDict):
    date: str
    account: str
    debit: str
    credit: str
    points: int
    memo: str


@dataclass(frozen=True)
class Movement:
    """One movement line of a roll-forward: its key, the ledger type whose account it uses, and its
    points signed as it moves the liability (issued +, spent -)."""

    key: str
    type: str
    points: int


def default_account(ledger_type: str) -> str:
    if ledger_type.startswith("REDEMPTION_"):
        return "Redemptions"
    if ledger_type == EXPIRY:
        return "Breakage income"
    if ledger_type.startswith("REFERRAL_") or ledger_type == RECOVERY:
        return "Referral expense"
    return "Promotional expense"


def account_for(ledger_type: str, accounts: Mapping[str, str]) -> str:
    """The counter-account of a ledger type: the setting's, else the default. Recoveries fall back to the
    clawbacks' account when the setting names that and not RECOVERY."""
    if ledger_type in accounts:
        return accounts[ledger_type]
    if ledger_type == RECOVERY and CLAWBACK in accounts:
        return accounts[CLAWBACK]
    return default_account(ledger_type)


def parse_accounts(text: str) -> dict[str, str]:
    """`TYPE=Account name` pairs separated by commas; raises ValueError naming the bad pair."""
    accounts: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        ledger_type, equals, account = (piece.strip() for piece in pair.partition("="))
        if not equals or not TYPE_NAME.fullmatch(ledger_type) or not account:
            raise ValueError(f"{pair!r} is not TYPE=Account name (TYPE a ledger type like REFERRAL_RECURRING, "
                             "the account not empty; pairs separated by commas)")
        if account == LIABILITY:
            raise ValueError(f"{pair!r}: {LIABILITY!r} is the liability itself, not a counter-account")
        if ledger_type in accounts:
            raise ValueError(f"{ledger_type} is given twice")
        accounts[ledger_type] = account
    return accounts


def movements(roll_forward: RollForwardData) -> list[Movement]:
    """The movement lines of a roll-forward (the stored dict's keys, debits kept positive there), signed
    as they move the liability, in the document's order; lines of 0 points left out."""
    lines = [Movement(f"issued.{kind}", kind, int(points)) for kind, points in roll_forward["issued"].items()]
    lines += [Movement(f"spent.{kind}", kind, -int(points)) for kind, points in roll_forward["spent"].items()]
    lines += [Movement("expired", EXPIRY, -int(roll_forward["expired"])),
              Movement("clawed_back", CLAWBACK, -int(roll_forward["clawed_back"])),
              Movement("recovered", RECOVERY, -int(roll_forward["recovered"]))]
    late_by_type = roll_forward.get("late_by_type")
    late = roll_forward.get("late_committed")
    late_points = late.get("points") if late else None
    if late_by_type:
        lines += [Movement(f"late.{kind}", kind, int(points)) for kind, points in late_by_type.items()]
    elif late_points:  # a previous run that stored no totals by type: one late line
        lines.append(Movement("late", "LATE", int(late_points)))
    return [line for line in lines if line.points]


def money(points: int, points_per_usd: Decimal) -> Decimal:
    """Points in US dollars to the cent (0 when points have no price)."""
    if not points_per_usd:
        return Decimal("0.00")
    return (Decimal(points) / Decimal(points_per_usd)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def journal_lines(roll_forward: RollForwardData, *, on: date, period: str, accounts: Mapping[str, str],
                  points_per_usd: Decimal) -> list[JournalLine]:
    """Two lines per movement (the liability's and its counter-account's), debits equal to credits."""
    lines: list[JournalLine] = []
    for movement in movements(roll_forward):
        amount = f"{money(abs(movement.points), points_per_usd):.2f}"
        memo = f"{period} {movement.key}"
        counter = account_for(movement.type, accounts)
        raises = movement.points > 0
        liability = _line(on, LIABILITY, credit=raises, amount=amount, points=movement.points, memo=memo)
        other = _line(on, counter, credit=not raises, amount=amount, points=movement.points, memo=memo)
        lines += [other, liability] if raises else [liability, other]
    return lines


def _line(on: date, account: str, *, credit: bool, amount: str, points: int, memo: str) -> JournalLine:
    return JournalLine(date=on.isoformat(), account=account, debit="0.00" if credit else amount,
                       credit=amount if credit else "0.00", points=points, memo=memo)


def journal_csv(lines: list[JournalLine]) -> str:
    """The `….journal.csv` text: header `date,account,debit,credit,points,memo`, one row per line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows([line[column] for column in HEADER] for line in lines)  # type: ignore[literal-required]
    return out.getvalue()


def totals(lines: list[JournalLine]) -> dict[str, Decimal]:
    """Debits and credits summed (they balance), and the liability account's net (credit - debit)."""
    debit = sum((Decimal(line["debit"]) for line in lines), Decimal("0.00"))
    credit = sum((Decimal(line["credit"]) for line in lines), Decimal("0.00"))
    liability = sum((Decimal(line["credit"]) - Decimal(line["debit"]) for line in lines
                     if line["account"] == LIABILITY), Decimal("0.00"))
    return {"debit": debit, "credit": credit, "liability_net": liability}
