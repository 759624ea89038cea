"""The period close: a calendar month's roll-forward from the ledger as it is now, its journal, and its
sign-off (SPEC "Period close, journal and liability schedule"; the shapes: the finance contract of issue 25).

A month is `[first instant, first instant of the next month)` in UTC. Its roll-forward: opening (the
ledger dated before the month) + the movements dated in it, by line as reconcile names them (issued and
spent by type, expired, clawed back, recovered) = closing (the ledger dated before the next month), in
points and money, with the month before beside it. All of it is read in ONE statement (`buckets`) that
sums the ledger by month bucket and line type; the same statement gives a reconcile the lines of every
month signed off, now, for its restatements.

`close(…, sign_off=NAME)` records the month once in `closed_months` (migration 026): its lines as signed,
the digest of its rows, and the whole document, all-or-nothing with its files: the journal CSV and the
document's JSON are written aside and flushed first, the row is inserted and committed, and only then are
the files renamed into place (`core.reports.FileSet`). A close without a sign-off is a draft: the same
document, status DRAFT, its files named `….draft.…` so that they never stand in for a signed month's.
"""
from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TypedDict, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from core.clock import utc_iso
from core.reports import FileSet, settle_leftovers
from core.sql import Queries
from jobs import journal, liability
from jobs.journal import JournalLine
from jobs.liability import Breakage, LiabilitySchedule
from jobs.reconcile_summary import (CLAWBACK, EXPIRY, NOT_SPENDING, RECOVERY, Money, RollForward, RollForwardData,
                                    money, usd)
from jobs.settings import RuleSettings

_queries = Queries(__file__)

REPORT = "period close"
PERIOD_FORMAT = re.compile(r"([0-9]{4})-([0-9]{2})")
FIRST_YEAR, LAST_YEAR = 1900, 2200


# ── the JSON shapes (the period document; restatements, also in a reconcile's summary) ──

class RestatedLine(TypedDict):
    key: str
    signed: int
    now: int
    change: int
    change_usd: str | None


class RestatedMonth(TypedDict):
    period: str
    signed_by: str
    signed_at: str
    lines: list[RestatedLine]
    closing_change: int
    closing_change_usd: str | None


class Restatements(TypedDict):
    months: list[RestatedMonth]
    total_change: int
    total_change_usd: str | None
    months_checked: int


class PreviousPeriod(TypedDict):
    period: str
    roll_forward: RollForwardData


class Digest(TypedDict):
    rows: int
    points: int
    hash: str


PeriodDocument = TypedDict("PeriodDocument", {
    "report": str, "period": str, "from": str, "to": str, "as_of": str, "status": str, "signed_by": str | None,
    "signed_at": str | None, "outstanding_points": int, "outstanding_money": Money | None,
    "roll_forward": RollForwardData, "previous": PreviousPeriod, "liability_schedule": LiabilitySchedule | None,
    "breakage": Breakage | None, "journal": list[JournalLine], "journal_file": str | None, "digest": Digest,
    "restatements": Restatements | None,
})


class AlreadySigned(Exception):
    """The month was signed off already: one line saying by whom and when."""


class NotEnded(Exception):
    """The month has not ended yet: it cannot be signed off."""


# ── months ───────────────────────────────────────────────────────────────────

def parse_period(text: str) -> date:
    """`YYYY-MM` to the month's first day; ValueError with one line otherwise."""
    matched = PERIOD_FORMAT.fullmatch(text.strip())
    if not matched or not 1 <= int(matched.group(2)) <= 12:
        raise ValueError(f"not a month YYYY-MM: {text!r} (like 2026-05)")
    year = int(matched.group(1))
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"{text!r} is outside the years {FIRST_YEAR} to {LAST_YEAR}")
    return date(year, int(matched.group(2)), 1)


def label(period: date) -> str:
    return f"{period:%Y-%m}"


def next_month(period: date) -> date:
    return date(period.year + period.month // 12, period.month % 12 + 1, 1)


def previous_month(period: date) -> date:
    return date(period.year - (period.month == 1), (period.month - 2) % 12 + 1, 1)


def first_instant(period: date) -> datetime:
    return datetime.combine(period, time(0), tzinfo=timezone.utc)


def last_day(period: date) -> date:
    return next_month(period) - timedelta(days=1)


# ── the ledger by month and line ─────────────────────────────────────────────

@dataclass(frozen=True)
class Bucket:
    """The ledger rows of one line type dated in one bucket of `buckets` (0: before the first bound)."""

    bucket: int
    type: str
    rows: int
    issued: int
    debited: int  # a positive number


def read_buckets(conn: Connection, bounds: Sequence[datetime]) -> list[Bucket]:
    """The ledger dated before the last bound, by bucket of `bounds` (ascending, distinct) and line type."""
    rows = conn.execute(_queries["buckets"], {"bounds": list(bounds), "until": bounds[-1]})
    return [Bucket(int(row.bucket), RECOVERY if row.recovery else row.type, int(row.rows), int(row.issued),
                   int(row.debited)) for row in rows]


def month_roll_forward(buckets: Iterable[Bucket], index: int, start: datetime) -> RollForwardData:
    """The roll-forward of the month that is bucket `index`: opening (every bucket before it) + its
    movements = closing, with exactly the keys of reconcile's RollForward (contract 1)."""
    before = [bucket for bucket in buckets if bucket.bucket < index]
    within = [bucket for bucket in buckets if bucket.bucket == index]
    opening = sum(bucket.issued - bucket.debited for bucket in before)
    issued_by: Counter[str] = Counter()
    debited_by: Counter[str] = Counter()
    for bucket in within:
        issued_by[bucket.type] += bucket.issued
        debited_by[bucket.type] += bucket.debited
    issued = {kind: points for kind, points in sorted(issued_by.items()) if points}
    spent = {kind: points for kind, points in sorted(debited_by.items()) if points and kind not in NOT_SPENDING}
    expired, clawed_back, recovered = (debited_by[kind] for kind in (EXPIRY, CLAWBACK, RECOVERY))
    expected = opening + sum(issued.values()) - sum(spent.values()) - expired - clawed_back - recovered
    closing = opening + sum(bucket.issued - bucket.debited for bucket in within)
    roll = RollForward(
        previous_run_id=None, period_after=utc_iso(start), opening=opening, issued=issued,
        issued_total=sum(issued.values()), spent=spent, spent_total=sum(spent.values()), expired=expired,
        clawed_back=clawed_back, recovered=recovered, late_committed={"rows": 0, "points": 0}, late_by_type={},
        expected_closing=expected, closing=closing, closing_rows=sum(bucket.rows for bucket in [*before, *within]),
        identity_holds=expected == closing, gap=closing - expected,
        gap_explanation=None if expected == closing else
        f"{closing - expected:+,} points: the month's lines and its closing disagree")
    return cast(RollForwardData, asdict(roll))


def lines_of(roll_forward: RollForwardData) -> dict[str, int]:
    """The roll-forward by line key, each signed as it moves the liability (contract: line keys);
    movement lines of 0 points left out."""
    movements = {line.key: line.points for line in journal.movements(roll_forward)}
    return {"opening": int(roll_forward["opening"]), **movements, "closing": int(roll_forward["closing"])}


def digest(conn: Connection, period: date) -> Digest:
    row = conn.execute(_queries["digest"], {"from": first_instant(period),
                                            "to": first_instant(next_month(period))}).one()
    return {"rows": int(row.rows), "points": int(row.points), "hash": str(row.hash)}


# ── restatements (contract 3) ────────────────────────────────────────────────

def line_order(key: str) -> tuple[int, str]:
    """Line keys in the document's order: opening, issued, spent, expired, clawed back, recovered, late, closing."""
    order = ("opening", "issued.", "spent.", "expired", "clawed_back", "recovered", "late", "closing")
    return next((number for number, prefix in enumerate(order) if key.startswith(prefix)), len(order)), key


def restatements(conn: Connection, points_per_usd: Decimal) -> Restatements | None:
    """Every signed month's lines now (the ledger in this transaction's snapshot, one statement for all of
    them) against its lines as signed: the months with a change, by line, in points and money. None when
    no month is signed. `total_change`: the movements restated, summed over the months (a row dated in a
    signed month moves that month's line and closing, and the opening and closing of every later one)."""
    signed = list(conn.execute(_queries["signed_months"]))
    if not signed:
        return None
    starts = sorted({first_instant(row.period) for row in signed}
                    | {first_instant(next_month(row.period)) for row in signed})
    buckets = read_buckets(conn, starts)
    months: list[RestatedMonth] = []
    total = 0
    for row in signed:
        start = first_instant(row.period)
        now = lines_of(month_roll_forward(buckets, starts.index(start) + 1, start))
        then = {key: int(value) for key, value in dict(row.lines).items()}
        changed = sorted((key for key in set(now) | set(then) if now.get(key, 0) != then.get(key, 0)),
                         key=line_order)
        if not changed:
            continue
        lines = [_change(key, then.get(key, 0), now.get(key, 0), points_per_usd) for key in changed]
        closing_change = now["closing"] - then.get("closing", 0)
        total += closing_change - (now["opening"] - then.get("opening", 0))
        months.append({"period": label(row.period), "signed_by": row.signed_by, "signed_at": utc_iso(row.signed_at),
                       "lines": lines, "closing_change": closing_change,
                       "closing_change_usd": _usd(closing_change, points_per_usd)})
    return {"months": months, "total_change": total, "total_change_usd": _usd(total, points_per_usd),
            "months_checked": len(signed)}


def _change(key: str, signed: int, now: int, points_per_usd: Decimal) -> RestatedLine:
    return {"key": key, "signed": signed, "now": now, "change": now - signed,
            "change_usd": _usd(now - signed, points_per_usd)}


def _usd(points: int, points_per_usd: Decimal) -> str | None:
    return usd(points, points_per_usd) if points_per_usd else None


# ── the liability schedule and breakage (jobs/liability.py, the SCHEDULE helper's) ──

# ── the period document (contract 2) ─────────────────────────────────────────

@dataclass(frozen=True)
class Signature:
    by: str
    at: datetime


def month_document(conn: Connection, settings: RuleSettings, period: date, *, signature: Signature | None,
                   journal_file: str | None) -> PeriodDocument:
    """The month's document as the ledger reads in `conn`'s snapshot now."""
    before, end = previous_month(period), next_month(period)
    start = first_instant(period)
    buckets = read_buckets(conn, [first_instant(before), start, first_instant(end)])
    roll = month_roll_forward(buckets, 2, start)
    previous = month_roll_forward(buckets, 1, first_instant(before))
    points_per_usd = settings.points_per_usd
    schedule, breakage = liability.schedule_and_breakage(conn, first_instant(end), settings, before_as_of=True)
    return {
        "report": REPORT, "period": label(period),
        "from": utc_iso(start), "to": utc_iso(first_instant(end)), "as_of": utc_iso(first_instant(end)),
        "status": "SIGNED" if signature else "DRAFT",
        "signed_by": signature.by if signature else None,
        "signed_at": utc_iso(signature.at) if signature else None,
        "outstanding_points": roll["closing"], "outstanding_money": money(roll["closing"], points_per_usd),
        "roll_forward": roll,
        "previous": {"period": label(before), "roll_forward": previous},
        "liability_schedule": schedule, "breakage": breakage,
        "journal": journal.journal_lines(roll, on=last_day(period), period=label(period),
                                         accounts=settings.journal_accounts, points_per_usd=points_per_usd),
        "journal_file": journal_file,
        "digest": digest(conn, period),
        "restatements": restatements(conn, points_per_usd),
    }


def document_json(document: PeriodDocument) -> str:
    """The document's text: the `.json` file, the stored `json` column and `report --period --format json`."""
    return json.dumps(document, indent=2) + "\n"


# ── files ────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class CloseFiles:
    journal: Path
    json: Path

    @classmethod
    def for_period(cls, reports_dir: Path, period: date, *, draft: bool) -> CloseFiles:
        stem = f"close-{label(period)}" + (".draft" if draft else "")
        directory = reports_dir.resolve()
        return cls(journal=directory / f"{stem}.journal.csv", json=directory / f"{stem}.json")


def _settle_leftovers(conn: Connection, reports_dir: Path, period: date) -> None:
    """Files a killed close of this month left aside (the month's lock is held: no other close of it is
    writing): a signed month's are published, a draft's or an unsigned month's removed."""
    signed = {_month_number(row.period) for row in conn.execute(_queries["signed_months"])}

    def month_of(name: str) -> int | None:
        matched = _SIGNED_FILE.fullmatch(name)
        return _month_number(date(int(matched.group(1)), int(matched.group(2)), 1)) if matched else None

    settle_leftovers(reports_dir.resolve(), f".close-{label(period)}.*part", month_of, lambda months: months & signed)


_SIGNED_FILE = re.compile(r"close-(\d{4})-(\d{2})\.(?:journal\.csv|json)")


def _month_number(period: date) -> int:
    return period.year * 100 + period.month


# ── close ────────────────────────────────────────────────────────────────────

@dataclass(frozen=True)
class Closed:
    """What a close made: the document, its text, the files written, and (a draft of a signed month)
    who signed the month and when."""

    document: PeriodDocument
    text: str
    files: CloseFiles
    signed_before: Signature | None


def close(engine: Engine, settings: RuleSettings, period: date, *, sign_off: str | None) -> Closed:
    """The month's document as known now, its files published; with `sign_off`, the month signed off,
    all-or-nothing with its files. Raises AlreadySigned or NotEnded (nothing written then)."""
    staged = FileSet()
    try:
        with engine.connect() as conn, _one_close_of(conn, period):
            conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                closed = _close_in(conn, settings, period, sign_off, staged)
            staged.publish()  # the row is committed: the files go into place (still one close of the month)
    except IntegrityError:
        _signed_meanwhile(engine, period)
        raise
    finally:
        staged.discard()  # whatever is still aside: nothing once published
    return closed


def _close_in(conn: Connection, settings: RuleSettings, period: date, sign_off: str | None,
              staged: FileSet) -> Closed:
    """In the close's transaction: the document read in its snapshot, its files staged and sealed, then
    (a sign-off) its row inserted; the caller commits, then publishes."""
    conn.execute(_queries["one_snapshot_per_node"])
    now: datetime = conn.execute(_queries["transaction_start"]).scalar_one()
    signed = _signature(conn, period)
    if sign_off is not None:
        _may_sign(period, signed, now)
    _settle_leftovers(conn, settings.reports_dir, period)
    signature = Signature(sign_off, now) if sign_off is not None else None
    files = CloseFiles.for_period(settings.reports_dir, period, draft=signature is None)
    document = month_document(conn, settings, period, signature=signature, journal_file=files.journal.name)
    text = document_json(document)
    staged.write_text(files.journal, journal.journal_csv(document["journal"]))
    staged.write_text(files.json, text)
    staged.seal()
    if signature is not None:
        _sign(conn, period, document, text)
    return Closed(document, text, files, signed)


@contextmanager
def _one_close_of(conn: Connection, period: date) -> Iterator[None]:
    """The month's session lock around the close (its own transactions, before and after the close's)."""
    key = {"key": f"rewards close {label(period)}"}
    conn.execute(_queries["lock_month"], key)
    conn.commit()
    try:
        yield
    finally:
        if not conn.closed and not conn.invalidated:
            if conn.in_transaction():
                conn.rollback()
            conn.execution_options(isolation_level="READ COMMITTED")
            conn.execute(_queries["unlock_month"], key)
            conn.commit()


def _signed_meanwhile(engine: Engine, period: date) -> None:
    """Another close signed the month between our check and our insert: say so as the check would."""
    with engine.connect() as conn:
        signed = _signature(conn, period)
    if signed is not None:
        _may_sign(period, signed, signed.at)


def _signature(conn: Connection, period: date) -> Signature | None:
    row = conn.execute(_queries["signed_month"], {"period": period}).first()
    return Signature(row.signed_by, row.signed_at) if row else None


def _may_sign(period: date, signed: Signature | None, now: datetime) -> None:
    if signed is not None:
        raise AlreadySigned(f"{label(period)} was signed off by {signed.by} at {utc_iso(signed.at)}; "
                            "a month is signed off once (`report --period` shows it as signed)")
    end = first_instant(next_month(period))
    if end > now:
        raise NotEnded(f"{label(period)} has not ended (it ends at {utc_iso(end)}, now is {utc_iso(now)}); "
                       "only a month that has ended can be signed off")


def _sign(conn: Connection, period: date, document: PeriodDocument, text: str) -> None:
    roll = document["roll_forward"]
    conn.execute(_queries["sign"], {
        "period": period, "opening": roll["opening"], "closing": roll["closing"],
        "lines": json.dumps(lines_of(roll)), "digest_rows": document["digest"]["rows"],
        "digest_points": document["digest"]["points"], "digest_hash": document["digest"]["hash"],
        "document": text, "signed_by": document["signed_by"],
        "signed_from": f"{socket.gethostname()} pid {os.getpid()}",
    })


def stored_document(conn: Connection, period: date) -> str | None:
    """A signed month's document, its text as signed; None when the month is not signed off."""
    row = conn.execute(_queries["stored_document"], {"period": period}).first()
    return None if row is None else str(row.document)
