"""reconcile's summary and roll-forward: what finance reads, from the totals of one snapshot.

Pure arithmetic, no database: `jobs/reconcile.py` reads the snapshot into a `Snapshot` and a `Found`,
`build_summary` turns them into the `Summary`. The summary's fields, in the order declared below,
are the JSON file's keys: `Summary.as_dict()` keeps that order, and migration 018 stores the summary
as `json` (its text as written), so the file, the table and `report --format json` all read in it.

The roll-forward: opening + issued - spent - expired - clawed back - recovered + late-committed =
closing. The period is (previous as-of, as-of]; movements count rows by `created_at` in it. Recoveries
(`REFERRAL_CLAWBACK` rows keyed `recover:…`) are the line RECOVERY, never clawed back nor spent.
Late-committed rows are those dated on or before the previous as-of that the previous run did not see
(the app dates a row at its transaction's start, and a run for a past as-of dates its rows in the past):
since the ledger is append-only, they are exactly the rows and points by which the ledger dated up to
the previous as-of now exceeds that run's closing, and by type, by which each type's totals exceed the
totals that run stored (`seen.ledger_by_type`). Anything else (fewer rows than that run saw, or the same
rows with other points) is a gap, reported with its explanation.

Exactly once. Every run stores what its snapshot saw, dated at or before its as-of: the ledger's rows,
credits and debits by line type, and referral_rewards' clawed-back totals (clawbacks, points taken,
expired before the clawback, unrecovered, recovered). The next run's movements are its own totals less
those: the part dated after the previous as-of is the period's, the rest is late. So a ledger row, an
unrecovered amount or a recovery is counted by the first reconcile (in as-of order) whose snapshot sees
it dated at or before its as-of, and by no other: the sums over a chain of reports telescope to the
totals of its last snapshot.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Sequence, TypedDict, Union, cast

from core.clock import utc_iso
from jobs.journal import JournalLine, journal_lines

if TYPE_CHECKING:  # they import this module's money and usd
    from jobs.liability import Breakage, LiabilitySchedule
    from jobs.period_close import Restatements

KINDS = ("MISSING_BALANCE", "ORPHAN_BALANCE", "BALANCE_MISMATCH", "EARNED_MISMATCH", "SPENT_MISMATCH",
         "CACHE_INCONSISTENT", "NEGATIVE_BALANCE")
EXPIRY = "EXPIRY"
CLAWBACK = "REFERRAL_CLAWBACK"
RECOVERY = "RECOVERY"  # the line of REFERRAL_CLAWBACK rows keyed recover:… (docs/rules.md "Recovery")
NOT_SPENDING = (EXPIRY, CLAWBACK, RECOVERY)  # debits finance reads on lines of their own, never as spending
MONTHS_CHARTED = 12
MONTHLY_KEYS = ("issued", "spent", "expired", "clawed_back")
DebitKey = Literal["spent", "expired", "clawed_back"]  # the monthly line a debit counts on
IDENTITY = "opening + issued - spent - expired - clawed_back - recovered + late_committed = closing"
UNRECOVERED_IDENTITY = "outstanding_opening + unrecovered_points - recovered_points = outstanding_points"


# ── what the snapshot holds ──────────────────────────────────────────────────

@dataclass(frozen=True)
class LedgerTotals:
    rows: int
    balance: int
    earned: int
    spent: int
    closing: int
    rows_after_as_of: int
    points_after_as_of: int
    dated_up_to_previous: int
    rows_up_to_previous: int


@dataclass(frozen=True)
class CacheTotals:
    rows: int
    balance: int
    earned: int
    spent: int


@dataclass(frozen=True)
class Movement:
    """Points of one ledger type moved in one charted month (None: before them), in the period or not."""

    type: str
    month: date | None
    in_period: bool
    issued: int
    debited: int
    rows: int = 0


TypeTotals = dict[str, list[int]]  # line type -> [rows, issued, debited] (debited as a positive number)


# ── the JSON shapes (as stored; jobs/reports/document.py reads them) ─────────

JsonValue = Union[None, bool, int, float, str, Sequence["JsonValue"], Mapping[str, "JsonValue"]]


class Money(TypedDict):
    usd: str
    points_per_usd: str


class LateCommitted(TypedDict):
    rows: int
    points: int


class RollForwardData(TypedDict, total=False):
    """A RollForward as plain data (older stored summaries may lack keys)."""

    previous_run_id: int | None
    period_after: str | None
    opening: int
    issued: dict[str, int]
    issued_total: int
    spent: dict[str, int]
    spent_total: int
    expired: int
    clawed_back: int
    recovered: int
    late_committed: LateCommitted
    late_by_type: dict[str, int] | None
    expected_closing: int
    closing: int
    closing_rows: int
    identity: str
    identity_holds: bool
    gap: int
    gap_explanation: str | None


class MonthlyLine(TypedDict):
    month: str
    issued: int
    spent: int
    expired: int
    clawed_back: int


class Counts(TypedDict):
    """Discrepant users or rules-audit findings: how many, by kind."""

    total: int
    by_kind: dict[str, int]


class UnrecoveredLate(TypedDict):
    clawbacks: int
    unrecovered_points: int


class UnrecoveredMoney(TypedDict):
    unrecovered_usd: str
    recovered_usd: str
    outstanding_usd: str
    points_per_usd: str


class UnrecoveredClawbacks(TypedDict, total=False):
    clawbacks: int
    clawed_back_points: int
    expired_points: int
    rewards_unrecovered: int
    unrecovered_points: int
    late: UnrecoveredLate
    recovered_points: int
    outstanding_opening: int
    outstanding_points: int
    identity: str
    identity_holds: bool
    money: UnrecoveredMoney | None


class Seen(TypedDict):
    """What a snapshot saw dated at or before its as-of (ClawbackTotals as plain data)."""

    ledger_by_type: TypeTotals
    clawbacks: dict[str, int] | None


def add_totals(*parts: TypeTotals, sign: int = 1) -> TypeTotals:
    """The first totals plus (sign 1) or less (sign -1) the others, line type by line type."""
    total: dict[str, list[int]] = {}
    for number, part in enumerate(parts):
        factor = 1 if number == 0 else sign
        for kind, values in part.items():
            line = total.setdefault(kind, [0, 0, 0])
            for index, value in enumerate(values):
                line[index] += factor * int(value)
    return {kind: values for kind, values in sorted(total.items()) if any(values)}


@dataclass(frozen=True)
class ClawbackTotals:
    """referral_rewards' clawed-back rewards, summed (dated at or before some instant)."""

    clawbacks: int = 0
    clawed_back_points: int = 0
    expired_points: int = 0
    rewards_unrecovered: int = 0
    unrecovered_points: int = 0
    recovered_points: int = 0

    def minus(self, other: ClawbackTotals) -> ClawbackTotals:
        return ClawbackTotals(*(getattr(self, name) - getattr(other, name) for name in _CLAWBACK_FIELDS))

    @classmethod
    def stored(cls, values: Mapping[str, int] | None) -> ClawbackTotals | None:
        return None if values is None else cls(**{name: int(values.get(name, 0)) for name in _CLAWBACK_FIELDS})


_CLAWBACK_FIELDS = ("clawbacks", "clawed_back_points", "expired_points", "rewards_unrecovered", "unrecovered_points",
                    "recovered_points")


@dataclass(frozen=True)
class PreviousReconcile:
    """The latest successful reconcile for an earlier as-of: the roll-forward's opening."""

    run_id: int
    as_of: datetime
    closing_balance: int
    closing_rows: int
    monthly: list[MonthlyLine] | None = None  # its chart's lines; None in summaries older than the chart
    # what its snapshot saw dated at or before its as-of (None in summaries older than exactly-once)
    ledger_by_type: TypeTotals | None = None
    clawbacks: ClawbackTotals | None = None

    def counted(self, rows: int, points: int) -> bool:
        """Are the rows dated up to its as-of now the rows it counted? The ledger is append-only, so the
        same number of rows with the same points is the same rows."""
        return (rows, points) == (self.closing_rows, self.closing_balance)


@dataclass(frozen=True)
class Unrecovered:
    """referral_rewards' clawed-back totals in the snapshot: dated at or before the as-of (`seen`), and
    at or before the previous as-of (None without a previous reconcile)."""

    seen: ClawbackTotals
    seen_up_to_previous: ClawbackTotals | None = None


@dataclass(frozen=True)
class Snapshot:
    """The totals read in the run's snapshot (the discrepant rows are streamed separately)."""

    previous: PreviousReconcile | None
    ledger: LedgerTotals
    cache: CacheTotals
    users_checked: int
    movements: list[Movement]
    months_from: datetime
    unrecovered: Unrecovered | None  # None until migration 016's referral_rewards exists
    # the previous reconcile's chart lines, when the movements hold only the rows dated after its as-of
    monthly_carried: list[MonthlyLine] | None = None
    # the ledger by line type dated at or before the previous as-of, in this snapshot (None: none read)
    ledger_by_type_up_to_previous: TypeTotals | None = None
    findings: dict[str, int] | None = None  # the rules audit's findings by kind (None: not audited)
    # the signed months' changes since their sign-off (jobs/period_close.py; None: no month signed)
    restatements: Restatements | None = None
    # the liability schedule at the as-of and the breakage of the 12 months before (jobs/liability.py)
    liability_schedule: LiabilitySchedule | None = None
    breakage: Breakage | None = None


@dataclass
class Found:
    """What the stream of discrepant users added up to: how many, by kind, and their drift (cache minus
    ledger) summed by field. Every other user's cache row equals the ledger, so the ledger's totals are
    the cache's less this drift, and the users checked are the cache rows plus the MISSING_BALANCE users."""

    total: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    drift: Counter[str] = field(default_factory=Counter)
    # users whose cache row a repair changes (created or set to the ledger's sums): every discrepant
    # user but those whose cache row equals the ledger (a negative ledger balance, true to the cache)
    repairable: int = 0

    def add(self, kinds: Sequence[str], *, balance: int, earned: int, spent: int, cache_true: bool = False) -> None:
        self.total += 1
        self.by_kind.update(kinds)
        self.drift.update(balance=balance, earned=earned, spent=spent)
        self.repairable += not cache_true

    def users_checked(self, cache: CacheTotals) -> int:
        return cache.rows + self.by_kind["MISSING_BALANCE"]


# ── the summary: its fields, in this order, are the JSON file's keys ─────────

@dataclass(frozen=True, kw_only=True)
class RollForward:
    previous_run_id: int | None
    period_after: str | None
    opening: int
    issued: dict[str, int]
    issued_total: int
    spent: dict[str, int]
    spent_total: int
    expired: int
    clawed_back: int
    recovered: int
    late_committed: LateCommitted
    late_by_type: dict[str, int] | None  # the late points by line type (None: the previous run stored none)
    expected_closing: int
    closing: int
    closing_rows: int
    identity: str = IDENTITY
    identity_holds: bool
    gap: int
    gap_explanation: str | None


@dataclass(frozen=True, kw_only=True)
class Summary:
    """The JSON summary finance reads: the liability, discrepancies by kind, the roll-forward."""

    report: str = "points reconciliation"
    run_id: int
    as_of: str
    verdict: str
    outstanding_points: int
    outstanding_money: Money | None
    users_checked: int
    ledger_rows: int
    discrepancies: Counts
    # the cache's columns total_earned / total_spent are all credits / all debits (expiries and
    # clawbacks included), so the summary names them for what they hold
    ledger: dict[str, int]
    cache: dict[str, int]
    net_drift: int
    repair_requested: bool
    repaired: int
    roll_forward: RollForward
    # changes to the totals of signed-off months since their sign-off, by month and line (None: none signed)
    restatements: Restatements | None = None
    unrecovered_clawbacks: UnrecoveredClawbacks | None
    findings: Counts | None
    monthly: list[MonthlyLine]
    after_as_of: dict[str, int]
    # what this snapshot saw dated at or before the as-of: the next reconcile's movements start from it
    seen: Seen
    liability_schedule: LiabilitySchedule | None = None
    breakage: Breakage | None = None
    # the roll-forward's movements as double-entry lines in money (jobs/journal.py), the `.journal.csv`'s
    journal: list[JournalLine] = field(default_factory=list)
    files: dict[str, str] | None

    def as_dict(self) -> dict[str, JsonValue]:
        """Plain data in field order, as the JSON file and the `json` column keep it."""
        return asdict(self)

    def with_repaired(self, repaired: int) -> Summary:
        return replace(self, repaired=repaired)


def build_summary(run_id: int, as_of: datetime, snapshot: Snapshot, found: Found, *, repaired: int,
                  repair_requested: bool, files: dict[str, str] | None,
                  points_per_usd: Decimal = Decimal(100), journal_accounts: Mapping[str, str] | None = None) -> Summary:
    ledger, cache = snapshot.ledger, snapshot.cache
    roll = roll_forward(snapshot)
    journal = journal_lines(cast(RollForwardData, asdict(roll)), on=as_of.astimezone(timezone.utc).date(), period=journal_period(run_id, as_of),
                            accounts=journal_accounts or {}, points_per_usd=points_per_usd)
    return Summary(
        run_id=run_id,
        as_of=utc_iso(as_of),
        verdict=verdict(found.total, roll),
        outstanding_points=ledger.closing,
        outstanding_money=money(ledger.closing, points_per_usd),
        users_checked=snapshot.users_checked,
        ledger_rows=ledger.rows,
        discrepancies={"total": found.total, "by_kind": {kind: found.by_kind.get(kind, 0) for kind in KINDS}},
        ledger={"balance": ledger.balance, "total_credits": ledger.earned, "total_debits": ledger.spent},
        cache={"balance": cache.balance, "total_credits": cache.earned, "total_debits": cache.spent,
               "rows": cache.rows},
        net_drift=cache.balance - ledger.balance,
        repair_requested=repair_requested,
        repaired=repaired,
        roll_forward=roll,
        restatements=snapshot.restatements,
        unrecovered_clawbacks=unrecovered_clawbacks(snapshot, points_per_usd),
        findings=_findings(snapshot.findings),
        monthly=monthly_movements(snapshot),
        after_as_of={"rows": ledger.rows_after_as_of, "points": ledger.points_after_as_of},
        seen={"ledger_by_type": closing_by_type(snapshot),
              "clawbacks": asdict(snapshot.unrecovered.seen) if snapshot.unrecovered else None},
        liability_schedule=snapshot.liability_schedule,
        breakage=snapshot.breakage,
        journal=journal,
        files=files,
    )


def journal_period(run_id: int, as_of: datetime) -> str:
    """The period a reconcile's journal lines name in their memo: its as-of's date and its run."""
    return f"{as_of.astimezone(timezone.utc):%Y-%m-%d} run {run_id}"


FINDING_KINDS = ("REWARD_INVARIANT", "REWARD_KEY_MISMATCH", "RECOVERY_INVARIANT", "EXPIRY_INVARIANT")


def _findings(by_kind: dict[str, int] | None) -> Counts | None:
    if by_kind is None:
        return None
    return {"total": sum(by_kind.values()), "by_kind": {kind: int(by_kind.get(kind, 0)) for kind in FINDING_KINDS}}


def unrecovered_clawbacks(snapshot: Snapshot, points_per_usd: Decimal) -> UnrecoveredClawbacks | None:
    """The clawbacks' unrecovered amounts newly recorded, recovered and outstanding at the as-of, in points
    and money: this snapshot's totals less those the previous reconcile stored (exactly once)."""
    unrecovered = snapshot.unrecovered
    if unrecovered is None:
        return None
    previous = snapshot.previous
    zero = ClawbackTotals()
    up_to_previous = unrecovered.seen_up_to_previous or zero
    # the previous run's totals; a summary older than exactly-once: what is dated up to its as-of now
    before = (previous.clawbacks or up_to_previous) if previous else zero
    new = unrecovered.seen.minus(before)
    late = up_to_previous.minus(before) if previous else zero
    opening = before.unrecovered_points - before.recovered_points
    outstanding = unrecovered.seen.unrecovered_points - unrecovered.seen.recovered_points
    return {
        "clawbacks": new.clawbacks,
        "clawed_back_points": new.clawed_back_points,
        "expired_points": new.expired_points,
        "rewards_unrecovered": new.rewards_unrecovered,
        "unrecovered_points": new.unrecovered_points,
        "late": {"clawbacks": late.clawbacks, "unrecovered_points": late.unrecovered_points},
        "recovered_points": new.recovered_points,
        "outstanding_opening": opening,
        "outstanding_points": outstanding,
        "identity": UNRECOVERED_IDENTITY,
        "identity_holds": opening + new.unrecovered_points - new.recovered_points == outstanding,
        "money": None if not points_per_usd else {
            "unrecovered_usd": usd(new.unrecovered_points, points_per_usd),
            "recovered_usd": usd(new.recovered_points, points_per_usd),
            "outstanding_usd": usd(outstanding, points_per_usd),
            "points_per_usd": str(points_per_usd)},
    }


def closing_by_type(snapshot: Snapshot) -> TypeTotals:
    """The ledger by line type dated at or before the as-of: what the rows up to the previous as-of hold
    (that run's stored totals when none came late) plus the period's."""
    period = _by_type(movement for movement in snapshot.movements if movement.in_period)
    previous = snapshot.previous
    if previous is None:
        return period
    earlier = snapshot.ledger_by_type_up_to_previous
    if earlier is None:
        earlier = previous.ledger_by_type or {}
    return add_totals(earlier, period)


def _by_type(movements: Iterable[Movement]) -> TypeTotals:
    total: dict[str, list[int]] = {}
    for movement in movements:
        line = total.setdefault(movement.type, [0, 0, 0])
        line[0] += movement.rows
        line[1] += movement.issued
        line[2] += movement.debited
    return add_totals(total)


def money(points: int, points_per_usd: Decimal) -> Money | None:
    """Points in US dollars (`points / REWARDS_POINTS_PER_USD`, to the cent); None when points have no price."""
    if not points_per_usd:
        return None
    return {"usd": usd(points, points_per_usd), "points_per_usd": str(points_per_usd)}


def usd(points: int, points_per_usd: Decimal) -> str:
    """Points in US dollars, to the cent, for a price that is not 0."""
    return str((Decimal(points) / Decimal(points_per_usd)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def verdict(discrepancies: int, roll: RollForward) -> str:
    problems = ([f"{discrepancies} discrepanc{'y' if discrepancies == 1 else 'ies'}"] if discrepancies else [])
    problems += ["roll-forward gap"] if not roll.identity_holds else []
    return "CLEAN" if not problems else "ATTENTION: " + " and ".join(problems)


# ── the roll-forward ─────────────────────────────────────────────────────────

def roll_forward(snapshot: Snapshot) -> RollForward:
    """opening + issued - spent - expired - clawed back + late-committed = closing (see the docstring above)."""
    previous = snapshot.previous
    opening = previous.closing_balance if previous else 0
    period = _period_movements(snapshot)
    issued = {kind: points for kind, (points, _debited) in period.items() if points}
    spent = {kind: debited for kind, (_issued, debited) in period.items() if debited and kind not in NOT_SPENDING}
    expired = period.get(EXPIRY, (0, 0))[1]
    clawed_back = period.get(CLAWBACK, (0, 0))[1]
    recovered = period.get(RECOVERY, (0, 0))[1]
    late_rows, late_points = _late_committed(snapshot)
    expected = (opening + sum(issued.values()) - sum(spent.values()) - expired - clawed_back - recovered
                + late_points)
    closing = snapshot.ledger.closing
    gap = closing - expected
    return RollForward(
        previous_run_id=previous.run_id if previous else None,
        period_after=utc_iso(previous.as_of) if previous else None,
        opening=opening,
        issued=issued,
        issued_total=sum(issued.values()),
        spent=spent,
        spent_total=sum(spent.values()),
        expired=expired,
        clawed_back=clawed_back,
        recovered=recovered,
        late_committed={"rows": late_rows, "points": late_points},
        late_by_type=_late_by_type(snapshot),
        expected_closing=expected,
        closing=closing,
        closing_rows=snapshot.ledger.rows - snapshot.ledger.rows_after_as_of,
        identity_holds=gap == 0,
        gap=gap,
        gap_explanation=_explain_gap(gap, previous, snapshot),
    )


def _period_movements(snapshot: Snapshot) -> dict[str, tuple[int, int]]:
    """(issued, debited) of each ledger type in the period, types in alphabetical order (the statement
    splits them by calendar month too)."""
    issued: Counter[str] = Counter()
    debited: Counter[str] = Counter()
    for movement in snapshot.movements:
        if movement.in_period:
            issued[movement.type] += movement.issued
            debited[movement.type] += movement.debited
    return {kind: (issued[kind], debited[kind]) for kind in sorted(set(issued) | set(debited))}


def _late_committed(snapshot: Snapshot) -> tuple[int, int]:
    previous, ledger = snapshot.previous, snapshot.ledger
    if previous is None:
        return 0, 0
    rows = ledger.rows_up_to_previous - previous.closing_rows
    points = ledger.dated_up_to_previous - previous.closing_balance
    if rows <= 0:  # nothing was added: a difference in points is no late write but a gap
        return 0, 0
    return rows, points


def _late_by_type(snapshot: Snapshot) -> dict[str, int] | None:
    """The late points by line type: the ledger by type dated up to the previous as-of now, less what
    that run stored. {} when nothing came late; None when that run stored no totals by type."""
    previous = snapshot.previous
    if previous is None:
        return {}
    if previous.ledger_by_type is None:
        return None
    if snapshot.ledger_by_type_up_to_previous is None:  # read only when rows came late
        return {}
    late = add_totals(snapshot.ledger_by_type_up_to_previous, previous.ledger_by_type, sign=-1)
    return {kind: issued - debited for kind, (_rows, issued, debited) in late.items() if issued - debited}


def _explain_gap(gap: int, previous: PreviousReconcile | None, snapshot: Snapshot) -> str | None:
    if gap == 0:
        return None
    if previous is None:  # cannot happen in one snapshot; said plainly should it ever
        return f"{gap:+,} points: the ledger's closing and its movements disagree"
    rows_now = snapshot.ledger.rows_up_to_previous
    return (f"{gap:+,} points: the ledger rows dated on or before the previous reconcile's as-of "
            f"({utc_iso(previous.as_of)}, run {previous.run_id}) no longer add up to its closing "
            f"{previous.closing_balance:,} ({previous.closing_rows:,} rows then, {rows_now:,} now): rows "
            "were removed or changed although the ledger is append-only (TRUNCATE, a disabled trigger, "
            "a restore); investigate before the close")


# ── the monthly chart's lines ────────────────────────────────────────────────

def month_starts(months_from: datetime) -> list[datetime]:
    """The first instants of the charted months and of the month after them (UTC)."""
    return [_months_after(months_from, number) for number in range(MONTHS_CHARTED + 1)]


def _months_after(first: datetime, months: int) -> datetime:
    year, month = divmod(first.month - 1 + months, 12)
    return first.replace(year=first.year + year, month=month + 1)


def monthly_movements(snapshot: Snapshot) -> list[MonthlyLine]:
    """Issued / spent / expired / clawed back per calendar month, the last 12 months up to the as-of."""
    carried = {line["month"]: line for line in snapshot.monthly_carried or []}
    months: dict[str, MonthlyLine] = {}
    for number in range(MONTHS_CHARTED):
        label = f"{_months_after(snapshot.months_from, number):%Y-%m}"
        before = cast(Mapping[str, int], carried.get(label) or {})  # a stored line may lack a key: 0
        months[label] = MonthlyLine(month=label, issued=int(before.get("issued", 0)), spent=int(before.get("spent", 0)),
                                    expired=int(before.get("expired", 0)),
                                    clawed_back=int(before.get("clawed_back", 0)))
    debit_lines: dict[str, DebitKey] = {EXPIRY: "expired", CLAWBACK: "clawed_back", RECOVERY: "clawed_back"}
    for movement in snapshot.movements:
        line = months.get(f"{movement.month:%Y-%m}") if movement.month is not None else None
        if line is None:
            continue  # a row of the period dated before the charted months
        line["issued"] += movement.issued
        debit_key: DebitKey = debit_lines.get(movement.type, "spent")
        line[debit_key] += movement.debited
    return list(months.values())

