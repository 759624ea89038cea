"""A period document (`close YYYY-MM`, `report --period YYYY-MM`) as text a terminal reads: the month's
roll-forward beside the month before's, in points and US dollars, each line signed as it moves the
liability; the journal's totals, the liability schedule, breakage, restatements and the digest.
Tables go through `cli.tables` and fit `width` by leaving out whole columns (the money first)."""
from __future__ import annotations

import io
import textwrap
from decimal import Decimal
from typing import Any, Sequence

from rich.console import Console

from cli.tables import Column, build_table
from core.clock import when
from jobs import journal
from jobs.period_close import line_order, lines_of
from jobs.reconcile_summary import usd

LABELS = {"opening": ("Opening liability", "points outstanding at the month's first instant"),
          "expired": ("Expired", "points past their expiry, taken by expire-points"),
          "clawed_back": ("Clawed back", "rewards reversed (their basis no longer holds)"),
          "recovered": ("Recovered", "unrecovered clawbacks taken from later balances"),
          "late": ("Late rows", "rows dated earlier, committed after the previous report"),
          "closing": ("Closing liability", "points outstanding at the month's end")}


def line_label(key: str) -> str:
    """A line key as a person reads it: `issued.REFERRAL_RECURRING` -> `Issued: REFERRAL_RECURRING`."""
    kind, _, ledger_type = key.partition(".")
    if ledger_type:
        return f"{kind.capitalize()}: {ledger_type}"
    return LABELS.get(key, (key, ""))[0]


def line_meaning(key: str) -> str:
    kind, _, ledger_type = key.partition(".")
    if kind == "issued":
        return "points credited in the month"
    if kind == "spent":
        return "points redeemed or debited (not expiries nor clawbacks)"
    return LABELS.get(kind, (key, ""))[1]


def _usd(points: int, points_per_usd: str | None) -> str:
    if not points_per_usd:
        return ""
    return _usd_text(usd(points, Decimal(points_per_usd)))


def _usd_text(amount: str) -> str:
    value = Decimal(amount)
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def _signed_usd(amount: Decimal) -> str:
    return f"-${-amount:,.2f}" if amount < 0 else f"+${amount:,.2f}"


def _render(columns: Sequence[Column], rows: Sequence[Sequence[Any]], width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False, soft_wrap=False)
    with console.capture() as captured:
        console.print(build_table(columns, rows, width=width))
    return [line.rstrip() for line in captured.get().splitlines()]


def close_table(document: dict[str, Any], *, width: int = 80) -> str:
    """The whole document as text, at most `width` wide (prose wrapped, tables fitted)."""
    money = document.get("outstanding_money") or {}
    price = money.get("points_per_usd")
    lines = _wrap(f"Period close {document['period']}: {document['status']}"
                  f" (from {when(document['from'])} to {when(document['to'])})", width)
    if document.get("signed_by"):
        lines += _wrap(f"Signed off by {document['signed_by']} at {when(document['signed_at'])}", width)
    outstanding = f"Outstanding liability at {when(document['to'])}: {document['outstanding_points']:,} points"
    lines += _wrap(outstanding + (f" = {_usd(document['outstanding_points'], price)}" if price else ""), width)
    lines += [""] + _roll_forward(document, price, width) + [""]
    lines += _journal(document, width) + [""]
    lines += _schedule(document, price, width)
    lines += _restatements(document, width)
    digest = document["digest"]
    lines += _wrap(f"Digest of the month's ledger rows: {digest['rows']:,} row(s), {digest['points']:+,} points, "
                   f"hash {digest['hash']}", width)
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    """A sentence of the document on lines of at most `width` (the next lines indented); no word is cut."""
    return textwrap.wrap(text, width=width, subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False) or [""]


def _roll_forward(document: dict[str, Any], price: str | None, width: int) -> list[str]:
    roll = document["roll_forward"]
    this = lines_of(roll)
    previous_document = document.get("previous") or None
    before = lines_of(previous_document["roll_forward"]) if previous_document else {}
    keys = sorted({*this, *before}, key=line_order)
    month, earlier = document["period"], previous_document["period"] if previous_document else "before"
    columns = [Column("Line"), Column(f"{month} points"), Column(f"{month} US$", drop=2, right=True),
               Column(f"{earlier} points", drop=1), Column(f"{earlier} US$", drop=3, right=True),
               Column("What it is", flex=True, drop=4)]
    rows = [[line_label(key), this.get(key, 0), _usd(this.get(key, 0), price),
             before.get(key, 0) if before else None, _usd(before.get(key, 0), price) if before else "",
             line_meaning(key)]
            for key in keys]
    if not price:
        columns, rows = [columns[i] for i in (0, 1, 3, 5)], [[row[i] for i in (0, 1, 3, 5)] for row in rows]
    verdict = ("opening + movements = closing: holds" if roll["identity_holds"]
               else f"IDENTITY GAP {roll['gap']:+,}: {roll['gap_explanation']}")
    return [*_wrap("Roll-forward (each line signed as it moves the liability)", width),
            *_render(columns, rows, width), *_wrap(verdict, width)]


def _journal(document: dict[str, Any], width: int) -> list[str]:
    lines: list[journal.JournalLine] = document.get("journal") or []
    totals = journal.totals(lines)
    where = f" ({document['journal_file']})" if document.get("journal_file") else ""
    return _wrap(f"Journal{where}: {len(lines)} lines, debits ${totals['debit']:,.2f} = credits "
                 f"${totals['credit']:,.2f}; the points liability moves {_signed_usd(totals['liability_net'])}", width)


def _schedule(document: dict[str, Any], price: str | None, width: int) -> list[str]:
    schedule, breakage = document.get("liability_schedule"), document.get("breakage")
    lines: list[str] = []
    if schedule:
        rows = [["due now (past expiry, not yet expired)", schedule.get("due_now_points", 0),
                 _usd(schedule.get("due_now_points", 0), price)]]
        rows += [[f"expiring in {month['month']}", month["points"], _usd(month["points"], price)]
                 for month in schedule.get("months", [])]
        rows.append(["later or never", schedule.get("later_points", 0), _usd(schedule.get("later_points", 0), price)])
        lines += [*_wrap(f"Liability schedule at {when(schedule.get('as_of'))} (if nothing is spent)", width),
                  *_render([Column("When"), Column("Points"), Column("US$", drop=1, right=True)], rows, width), ""]
    else:
        lines += ["Liability schedule: not available", ""]
    if breakage:
        rate = breakage.get("rate")
        lines += [*_wrap(f"Breakage {when(breakage['from'])} to {when(breakage['to'])}: {breakage['expired_points']:,} "
                         f"expired of {breakage['issued_points']:,} issued"
                         + (f" (rate {rate})" if rate is not None else " (nothing issued)"), width), ""]
    return lines


def _restatements(document: dict[str, Any], width: int) -> list[str]:
    restated = document.get("restatements")
    if restated is None:
        return ["Restatements: no month is signed off", ""]
    if not restated["months"]:
        return [*_wrap(f"Restatements: none ({restated['months_checked']} signed month(s) unchanged)", width), ""]
    rows = [[month["period"], line_label(line["key"]), line["signed"], line["now"], line["change"],
             _usd_text(line["change_usd"]) if line["change_usd"] else ""]
            for month in restated["months"] for line in month["lines"]]
    columns = [Column("Month"), Column("Line"), Column("Signed", drop=2), Column("Now", drop=3),
               Column("Change"), Column("US$", drop=1, right=True)]
    total = f"{restated['total_change']:+,} points" + (f" ({_usd_text(restated['total_change_usd'])})"
                                                        if restated.get("total_change_usd") else "")
    return [*_wrap(f"Restatements of signed months since their sign-off: {total} of movements", width),
            *_render(columns, rows, width), ""]
