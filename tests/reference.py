"""A from-scratch reference of the money rules, written from SPEC v3 and docs/rules.md alone.

Plain Python over plain values: no SQL, nothing of jobs/ (a second reading of the rules, never a call
of the jobs' own derivation). tests/integration/test_rewards_any_history.py reads the database into
these values after random histories and asks the functions below for violations:

- `reward_violations`: the reward invariant of every (referred user, level, month), the basis record
  against the ledger, and the keys;
- `recovery_violations`: outstanding unrecovered points per (beneficiary, level), and the `recover:` rows;
- `expiry_violations`: no user has points past their expiry still unexpired (docs/rules.md "Expiry: lots");
- `ledger_violations`: no balance below zero, and the cache equals the ledger.

Each returns a list of sentences, empty when the rules hold.
"""
from __future__ import annotations

import calendar
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Iterable

LEVELS = (1, 2)
FEED_STATUSES = ("PAID", "REFUNDED", "FAILED")
REWARD_TYPES = {"REFERRAL_RECURRING": 1, "REFERRAL_L2": 2}
PREFIXES = {1: "recurring", 2: "l2"}
CLAWBACK = "REFERRAL_CLAWBACK"
EXPIRY = "EXPIRY"

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_REWARD_KEY = re.compile(rf"(recurring|l2):({_UUID}):(\d+)(?::({_UUID})(?::(\d+))?)?")
_ISO = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
_RECOVER_KEY = re.compile(rf"recover:({_UUID}):({_ISO}):([12])(?::(\d+))?")


# ── time ─────────────────────────────────────────────────────────────────────

def add_months(instant: datetime, months: int) -> datetime:
    """PostgreSQL's `timestamptz + n months` in UTC (months added at once, the day clamped to the month's end)."""
    index = instant.month - 1 + months
    year, month = instant.year + index // 12, index % 12 + 1
    return instant.replace(year=year, month=month, day=min(instant.day, calendar.monthrange(year, month)[1]))


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))


# ── the data, as plain values ─────────────────────────────────────────────────

@dataclass(frozen=True)
class Relationship:
    id: uuid.UUID
    referrer: uuid.UUID
    referred: uuid.UUID
    level: int
    status: str
    rewarded_at: datetime | None


@dataclass(frozen=True)
class FeedRow:
    """A row of the payments feed as it is now; a view's row may hold anything, NULLs included."""
    id: uuid.UUID | None
    user: uuid.UUID | None
    amount_cents: int | None
    status: str | None
    paid_at: datetime | None


@dataclass(frozen=True)
class Reward:
    """A row of `referral_rewards`."""
    key: str
    relationship_id: uuid.UUID
    referred: uuid.UUID | None
    level: int
    month: int
    beneficiary: uuid.UUID
    payment_id: uuid.UUID
    basis_paid_at: datetime | None
    basis_amount_cents: int | None
    points: int
    rewarded_at: datetime
    clawback_key: str | None
    clawed_back_points: int
    expired_points: int
    unrecovered_points: int
    recovered_points: int
    clawed_back_at: datetime | None

    @property
    def standing(self) -> bool:
        return self.clawback_key is None


@dataclass(frozen=True)
class LedgerRow:
    id: uuid.UUID
    user: uuid.UUID
    delta: int
    type: str
    ref_id: uuid.UUID | None
    key: str | None
    created_at: datetime


@dataclass(frozen=True)
class Rules:
    """The settings the rules read. Reward amounts are objects with `points` (whole points or None) and
    `percent` (a Decimal or None), like REWARDS_RECURRING_REWARD parses to."""
    recurring_months: int
    l2_months: int
    recurring_reward: Any
    l2_reward: Any
    points_per_usd: Decimal
    hold_days: int
    expiry_months: int
    notice_days: int = 30

    def amount(self, level: int) -> Any:
        return self.recurring_reward if level == 1 else self.l2_reward

    def months(self, level: int) -> range:
        return range(1, self.recurring_months + 1) if level == 1 else range(0, self.l2_months)


@dataclass(frozen=True)
class PaidMonth:
    referred: uuid.UUID
    level: int
    month: int
    relationship: Relationship
    beneficiary: uuid.UUID
    basis: FeedRow
    price: int


# ── the feed ────────────────────────────────────────────────────────────────

def usable_feed(rows: Iterable[FeedRow]) -> dict[uuid.UUID, FeedRow]:
    """{payment id: row} of the usable rows: every field set, amount >= 0, a known status, and an id no
    other row of the feed has (a duplicated id makes every row with that id unusable)."""
    rows = list(rows)
    ids = Counter(row.id for row in rows if row.id is not None)
    return {row.id: row for row in rows
            if row.id is not None and ids[row.id] == 1 and row.user is not None and row.amount_cents is not None
            and row.status is not None and row.paid_at is not None and row.amount_cents >= 0
            and row.status in FEED_STATUSES}


def skipped_feed_rows(rows: Iterable[FeedRow]) -> int:
    rows = list(rows)
    return len(rows) - len(usable_feed(rows))


# ── rewards ─────────────────────────────────────────────────────────────────

def price(amount: Any, points_per_usd: Decimal, cents: int) -> int:
    """Whole points, or floor(cents × pct/100 × points_per_usd/100) in exact decimal arithmetic."""
    if amount.points is not None:
        return int(amount.points)
    return int((Decimal(cents) * Decimal(amount.percent) * Decimal(points_per_usd)) // Decimal(10000))


def month_bounds(rewarded_at: datetime, k: int) -> tuple[datetime, datetime]:
    return add_months(rewarded_at, k), add_months(rewarded_at, k + 1)


def earning_beneficiary(r: Relationship, level: int, by_referred: dict[uuid.UUID, Relationship]) -> uuid.UUID | None:
    """The beneficiary of `r`'s months at `level` when `r` earns at that level (SPEC's job sections), else None."""
    if r.status != "REWARDED" or r.rewarded_at is None:
        return None
    if level == 1:
        return r.referrer if r.level == 1 and r.referrer != r.referred else None
    if r.level == 2:
        beneficiary = r.referrer
    else:
        parent = by_referred.get(r.referrer)
        if parent is None or parent.level != 1 or parent.status not in ("ACTIVE", "REWARDED"):
            return None
        beneficiary = parent.referrer
    if beneficiary == r.referred or (r.level == 1 and beneficiary == r.referrer):
        return None
    return beneficiary


def paid_months(relationships: Iterable[Relationship], usable: dict[uuid.UUID, FeedRow], rules: Rules,
                as_of: datetime) -> dict[tuple[uuid.UUID, int, int], PaidMonth]:
    """{(referred user, level, k): the paid month} under the current relationships, feed and settings."""
    relationships = list(relationships)
    by_referred = {r.referred: r for r in relationships}
    counts_until = as_of - timedelta(days=rules.hold_days)
    paid_by_user: dict[uuid.UUID, list[FeedRow]] = defaultdict(list)
    for row in usable.values():
        if row.status == "PAID" and row.paid_at <= counts_until:
            paid_by_user[row.user].append(row)
    months = {}
    for r in relationships:
        for level in LEVELS:
            beneficiary = earning_beneficiary(r, level, by_referred)
            if beneficiary is None:
                continue
            for k in rules.months(level):
                start, end = month_bounds(r.rewarded_at, k)
                qualifying = [p for p in paid_by_user[r.referred] if start <= p.paid_at < end]
                if qualifying:
                    basis = min(qualifying, key=lambda p: (p.paid_at, p.id))
                    months[(r.referred, level, k)] = PaidMonth(
                        r.referred, level, k, r, beneficiary, basis,
                        price(rules.amount(level), rules.points_per_usd, basis.amount_cents))
    return months


def basis_holds(reward: Reward, usable: dict[uuid.UUID, FeedRow], by_referred: dict[uuid.UUID, Relationship]) -> bool:
    """The basis payment is usable, PAID, at the amount recorded, and in the reward's month under the grid
    of the referred user's current relationship (no grid, no month test)."""
    payment = usable.get(reward.payment_id)
    if payment is None or payment.status != "PAID" or payment.amount_cents != reward.basis_amount_cents:
        return False
    current = by_referred.get(reward.referred)
    if current is None or current.rewarded_at is None:
        return True
    start, end = month_bounds(current.rewarded_at, reward.month)
    return start <= payment.paid_at < end


def reward_violations(*, rewards: list[Reward], relationships: list[Relationship], feed: list[FeedRow],
                      ledger: list[LedgerRow], rules: Rules, as_of: datetime,
                      fixed_prices: bool = False) -> list[str]:
    """The reward invariant after both reward jobs ran at `as_of` (the latest as-of), and the basis record
    against the ledger. `fixed_prices`: the reward settings never changed, so a standing reward's points
    are its recorded basis amount priced under them."""
    out: list[str] = []
    usable = usable_feed(feed)
    by_referred = {r.referred: r for r in relationships}
    paid = paid_months(relationships, usable, rules, as_of)
    by_key = {reward.key: reward for reward in rewards}

    standing: dict[tuple, list[Reward]] = defaultdict(list)
    for reward in rewards:
        if reward.standing:
            standing[(reward.referred, reward.level, reward.month)].append(reward)
    for month, held in standing.items():
        if len(held) > 1:
            out.append(f"month {_month(month)} holds {len(held)} standing rewards: {[r.key for r in held]}")
        for reward in held:
            if not basis_holds(reward, usable, by_referred):
                out.append(f"standing reward {reward.key} (month {_month(month)}) on payment {reward.payment_id}"
                           f" whose basis does not hold: payment now {_payment(usable, feed, reward.payment_id)},"
                           f" recorded amount {reward.basis_amount_cents}, grid from"
                           f" {_grid(by_referred.get(reward.referred))}")
            if fixed_prices and reward.basis_amount_cents is not None:
                expected = price(rules.amount(reward.level), rules.points_per_usd, reward.basis_amount_cents)
                if reward.points != expected:
                    out.append(f"standing reward {reward.key} has {reward.points} points; its basis of"
                               f" {reward.basis_amount_cents} cents is worth {expected}")
    for month, paid_month in paid.items():
        if paid_month.price > 0 and len(standing.get(month, [])) != 1:
            out.append(f"paid month {_month(month)} (basis {paid_month.basis.id} of {paid_month.basis.amount_cents}"
                       f" cents at {paid_month.basis.paid_at:%Y-%m-%d %H:%M:%S}, price {paid_month.price}, for"
                       f" {paid_month.beneficiary}) holds {len(standing.get(month, []))} standing rewards")

    total_expired: dict[uuid.UUID, int] = defaultdict(int)
    for row in ledger:
        if row.type == EXPIRY:
            total_expired[row.user] += -row.delta
    for reward in rewards:
        out.extend(_record_violations(reward, by_key))
        if not reward.standing and reward.expired_points > total_expired[reward.beneficiary]:
            out.append(f"reward {reward.key}: {reward.expired_points} points counted as expired, but"
                       f" {reward.beneficiary} has only {total_expired[reward.beneficiary]} points of EXPIRY rows")

    ledger_by_key = {row.key: row for row in ledger if row.key is not None}
    clawback_keys = {reward.clawback_key for reward in rewards if reward.clawback_key}
    for row in ledger:
        if row.type in REWARD_TYPES:
            reward = by_key.get(row.key)
            if reward is None:
                out.append(f"ledger row {row.key} ({row.type} {row.delta}) has no basis record")
            elif (reward.points, reward.beneficiary, reward.level, reward.relationship_id, reward.rewarded_at) != (
                    row.delta, row.user, REWARD_TYPES[row.type], row.ref_id, row.created_at):
                out.append(f"ledger row {row.key} ({row.type} {row.delta} for {row.user}, ref {row.ref_id}, at"
                           f" {row.created_at}) differs from its basis record ({reward.points} for"
                           f" {reward.beneficiary}, level {reward.level}, ref {reward.relationship_id}, at"
                           f" {reward.rewarded_at})")
        elif row.type == CLAWBACK and row.key and row.key.startswith("clawback:"):
            if row.key not in clawback_keys:
                out.append(f"clawback row {row.key} ({row.delta}) belongs to no clawed-back reward")
        elif row.type == CLAWBACK and not (row.key and row.key.startswith("recover:")):
            out.append(f"{CLAWBACK} row {row.key} ({row.delta}) is neither a clawback nor a recovery")
    for reward in rewards:
        row = ledger_by_key.get(reward.key)
        if row is None or row.type not in REWARD_TYPES:
            out.append(f"reward {reward.key} ({reward.points} points) has no ledger row")
        if reward.standing:
            continue
        row = ledger_by_key.get(reward.clawback_key)
        if reward.clawed_back_points == 0:
            if row is not None:
                out.append(f"reward {reward.key} took 0 points back, yet {reward.clawback_key} is in the ledger")
        elif row is None:
            out.append(f"reward {reward.key} took {reward.clawed_back_points} points back: no ledger row"
                       f" {reward.clawback_key}")
        elif (row.delta, row.user, row.type, row.ref_id, row.created_at) != (
                -reward.clawed_back_points, reward.beneficiary, CLAWBACK, reward.relationship_id,
                reward.clawed_back_at):
            out.append(f"clawback row {row.key} ({row.type} {row.delta} for {row.user}, ref {row.ref_id}, at"
                       f" {row.created_at}) differs from its reward's record (-{reward.clawed_back_points} for"
                       f" {reward.beneficiary}, ref {reward.relationship_id}, at {reward.clawed_back_at})")
    return out


def run_violations(*, level: int, as_of: datetime, rules: Rules, relationships: list[Relationship],
                   feed: list[FeedRow], before: list[Reward], after: list[Reward]) -> list[str]:
    """One run of the level-`level` job at `as_of`, from the data it saw (relationships, feed, the basis
    records `before`) to the basis records `after`: it clawed back exactly the standing rewards of its
    level dated by `as_of` whose basis does not hold (or that a month's earlier holding reward outranks),
    and wrote exactly one reward for every paid month with a price above 0 left without a standing reward,
    on the month's basis, for its current beneficiary, at the current price, under the next free key."""
    out: list[str] = []
    usable = usable_feed(feed)
    by_referred = {r.referred: r for r in relationships}
    was = {reward.key: reward for reward in before}
    now = {reward.key: reward for reward in after}
    standing: dict[tuple, list[Reward]] = defaultdict(list)
    for reward in before:
        if reward.standing and reward.level == level:
            standing[(reward.referred, reward.level, reward.month)].append(reward)
    to_claw = set()
    for rewards_of_month in standing.values():
        holding = [r for r in rewards_of_month if basis_holds(r, usable, by_referred)]
        kept = min(holding, key=lambda r: (r.rewarded_at, r.key), default=None)
        for reward in rewards_of_month:
            if reward.rewarded_at <= as_of and (reward not in holding or (reward.rewarded_at, reward.key) > (
                    kept.rewarded_at, kept.key)):
                to_claw.add(reward.key)
    left = {month for month, rewards_of_month in standing.items()
            if any(reward.key not in to_claw for reward in rewards_of_month)}

    for key, reward in was.items():
        later = now.get(key)
        if later is None:
            out.append(f"the run deleted the basis record {key}")
        elif reward.standing and not later.standing and key not in to_claw:
            out.append(f"the run clawed back {key} (level {reward.level}, dated {reward.rewarded_at}) whose basis"
                       f" holds: payment {_payment(usable, feed, reward.payment_id)}, recorded"
                       f" {reward.basis_amount_cents} cents, month {reward.month} of the grid from"
                       f" {_grid(by_referred.get(reward.referred))}")
        elif key in to_claw and later.standing:
            out.append(f"the run left {key} standing (level {reward.level}, dated {reward.rewarded_at}) though its"
                       f" basis does not hold: payment now {_payment(usable, feed, reward.payment_id)}, recorded"
                       f" {reward.basis_amount_cents} cents, month {reward.month} of the grid from"
                       f" {_grid(by_referred.get(reward.referred))}")
        elif key in to_claw and later.clawed_back_at != as_of:
            out.append(f"{key} clawed back by the run at {as_of} is dated {later.clawed_back_at}")
        elif not reward.standing and (later.clawback_key, later.clawed_back_points, later.expired_points,
                                      later.unrecovered_points, later.clawed_back_at) != (
                reward.clawback_key, reward.clawed_back_points, reward.expired_points, reward.unrecovered_points,
                reward.clawed_back_at):
            out.append(f"the run changed the clawback of {key}")
        elif later.recovered_points < reward.recovered_points:
            out.append(f"the run lowered the recovered points of {key}")

    owed = {month: paid for month, paid in paid_months(relationships, usable, rules, as_of).items()
            if month[1] == level and paid.price > 0 and month not in left}
    written: dict[tuple, list[Reward]] = defaultdict(list)
    for key, reward in now.items():
        if key not in was:
            written[(reward.referred, reward.level, reward.month)].append(reward)
    for month in set(owed) | set(written):
        paid, new = owed.get(month), written.get(month, [])
        if paid is None:
            out.append(f"the run rewarded month {_month(month)} that owes nothing: {[r.key for r in new]}")
            continue
        if len(new) != 1:
            out.append(f"the run wrote {len(new)} rewards for the owed month {_month(month)} (basis {paid.basis.id},"
                       f" price {paid.price}, for {paid.beneficiary})")
            continue
        reward = new[0]
        expected = (paid.relationship.id, paid.beneficiary, paid.basis.id, paid.basis.paid_at,
                    paid.basis.amount_cents, paid.price, as_of)
        actual = (reward.relationship_id, reward.beneficiary, reward.payment_id, reward.basis_paid_at,
                  reward.basis_amount_cents, reward.points, reward.rewarded_at)
        if actual != expected or not reward.standing:
            out.append(f"the run rewarded month {_month(month)} as {reward.key} with (relationship, beneficiary,"
                       f" payment, paid_at, amount, points, as-of) {actual}; owed {expected}")
        base = f"{PREFIXES[level]}:{paid.relationship.id}:{month[2]}"
        on_payment = f"{base}:{paid.basis.id}"
        if base not in was:
            if reward.key != base:
                out.append(f"the run rewarded month {_month(month)} under {reward.key}; {base} is free")
        elif on_payment not in was:
            if reward.key != on_payment:
                out.append(f"the run rewarded month {_month(month)} under {reward.key}; {on_payment} is free")
        elif not re.fullmatch(re.escape(on_payment) + r":\d+", reward.key):
            out.append(f"the run rewarded month {_month(month)} under {reward.key}, not {on_payment}:{{n}}")
    return out


def recovered_after_run(*, level: int, as_of: datetime, rewards: list[Reward], ledger: list[LedgerRow]) -> list[str]:
    """After a run of the level-`level` job at `as_of` with recovery on: a beneficiary still owing points of
    clawbacks dated by `as_of` has a balance of 0."""
    outstanding: dict[uuid.UUID, int] = defaultdict(int)
    for reward in rewards:
        if not reward.standing and reward.level == level and reward.clawed_back_at <= as_of:
            outstanding[reward.beneficiary] += reward.unrecovered_points - reward.recovered_points
    balances: dict[uuid.UUID, int] = defaultdict(int)
    for row in ledger:
        balances[row.user] += row.delta
    return [f"{user} still owes {points} level-{level} points of clawbacks dated by {as_of}, with a balance of"
            f" {balances[user]}" for user, points in outstanding.items() if points > 0 and balances[user] != 0]


def _record_violations(reward: Reward, by_key: dict[str, Reward]) -> list[str]:
    """One basis record on its own: key, points, clawback parts."""
    out = []
    match = _REWARD_KEY.fullmatch(reward.key)
    if match is None:
        out.append(f"reward key {reward.key!r} is not {{prefix}}:{{relationship}}:{{k}}[:{{payment}}[:{{n}}]]")
    else:
        prefix, relationship, k, payment, n = match.groups()
        base = f"{prefix}:{relationship}:{k}"
        if (prefix, relationship, int(k)) != (PREFIXES[reward.level], str(reward.relationship_id), reward.month):
            out.append(f"reward key {reward.key} names another level, relationship or month than its record"
                       f" (level {reward.level}, relationship {reward.relationship_id}, month {reward.month})")
        if payment is not None and payment != str(reward.payment_id):
            out.append(f"reward key {reward.key} names another payment than its basis {reward.payment_id}")
        if payment is not None and base not in by_key:
            out.append(f"reward key {reward.key} is taken while {base} was never written")
        if n is not None and (int(n) < 2 or f"{base}:{payment}" not in by_key):
            out.append(f"reward key {reward.key} is taken while {base}:{payment} was never written")
    if reward.points <= 0:
        out.append(f"reward {reward.key} of {reward.points} points")
    if reward.standing:
        if (reward.clawed_back_points, reward.expired_points, reward.unrecovered_points,
                reward.recovered_points) != (0, 0, 0, 0) or reward.clawed_back_at is not None:
            out.append(f"standing reward {reward.key} carries clawback amounts")
        return out
    if reward.clawback_key != f"clawback:{reward.key}":
        out.append(f"reward {reward.key} clawed back under the key {reward.clawback_key}")
    if reward.clawed_back_points + reward.expired_points + reward.unrecovered_points != reward.points:
        out.append(f"reward {reward.key}: taken {reward.clawed_back_points} + expired {reward.expired_points}"
                   f" + unrecovered {reward.unrecovered_points} != {reward.points} points")
    if min(reward.clawed_back_points, reward.expired_points, reward.unrecovered_points) < 0 or not (
            0 <= reward.recovered_points <= reward.unrecovered_points):
        out.append(f"reward {reward.key}: a negative part, or recovered {reward.recovered_points} outside"
                   f" 0..unrecovered {reward.unrecovered_points}")
    if reward.clawed_back_at is None or reward.clawed_back_at < reward.rewarded_at:
        out.append(f"reward {reward.key} dated {reward.rewarded_at} was clawed back by a run dated"
                   f" {reward.clawed_back_at}: a run for a past as-of reversed a later row")
    return out


def _month(month: tuple) -> str:
    referred, level, k = month
    return f"({referred}, L{level}, k={k})"


def _grid(r: Relationship | None) -> str:
    return "nothing (no current relationship)" if r is None else f"{r.rewarded_at} ({r.id})"


def _payment(usable: dict[uuid.UUID, FeedRow], feed: list[FeedRow], payment_id: uuid.UUID) -> str:
    if payment_id in usable:
        p = usable[payment_id]
        return f"{p.status} {p.amount_cents} cents at {p.paid_at}"
    rows = [row for row in feed if row.id == payment_id]
    return "gone from the feed" if not rows else f"unusable ({len(rows)} rows with its id)"


# ── recovery ──────────────────────────────────────────────────────────────────

def recover_key(key: str) -> tuple[uuid.UUID, datetime, int, int] | None:
    """`recover:{B}:{as-of ISO-8601}:{L}[:{n}]` → (B, as-of, L, n), or None."""
    match = _RECOVER_KEY.fullmatch(key or "")
    if match is None:
        return None
    return uuid.UUID(match[1]), parse_iso(match[2]), int(match[3]), int(match[4] or 1)


def recovery_violations(*, rewards: list[Reward], ledger: list[LedgerRow],
                        balances_after_level: dict[int, dict[uuid.UUID, int]] | None,
                        ever_recovered: bool = True) -> list[str]:
    """Per (beneficiary, level): outstanding = Σ(unrecovered − recovered) >= 0, above 0 only where the
    beneficiary's balance was 0 right after that level's job ran at the latest as-of
    (`balances_after_level[L]`; None when recovery was off there); the `recover:` rows add up to the
    recovered points, and by any instant no more was recovered than clawbacks dated by then left unrecovered."""
    out: list[str] = []
    outstanding: dict[tuple, int] = defaultdict(int)
    recovered: dict[tuple, int] = defaultdict(int)
    unrecovered_at: dict[tuple, list[tuple[datetime, int]]] = defaultdict(list)
    for reward in rewards:
        if reward.standing:
            continue
        pair = (reward.beneficiary, reward.level)
        outstanding[pair] += reward.unrecovered_points - reward.recovered_points
        recovered[pair] += reward.recovered_points
        if reward.unrecovered_points:
            unrecovered_at[pair].append((reward.clawed_back_at, reward.unrecovered_points))
    recover_rows: dict[tuple, list[tuple[datetime, int]]] = defaultdict(list)
    for row in ledger:
        if not (row.key or "").startswith("recover:"):
            continue
        parsed = recover_key(row.key)
        if parsed is None:
            out.append(f"recovery key {row.key!r} is not recover:{{B}}:{{as-of}}:{{L}}[:{{n}}]")
            continue
        beneficiary, as_of, level, n = parsed
        if (row.user, row.type, row.ref_id, row.created_at) != (beneficiary, CLAWBACK, None, as_of) or row.delta >= 0:
            out.append(f"recovery row {row.key}: {row.type} {row.delta} for {row.user}, ref {row.ref_id}, at"
                       f" {row.created_at}")
        recover_rows[(beneficiary, level)].append((as_of, -row.delta))
    if not ever_recovered and (recover_rows or any(recovered.values())):
        out.append("recovery was off in every run, yet points were recovered")
    for pair in set(outstanding) | set(recover_rows):
        beneficiary, level = pair
        if outstanding[pair] < 0:
            out.append(f"{beneficiary} level {level}: outstanding {outstanding[pair]} < 0")
        if sum(points for _, points in recover_rows[pair]) != recovered[pair]:
            out.append(f"{beneficiary} level {level}: recover rows take {sum(p for _, p in recover_rows[pair])}"
                       f" points, the rewards record {recovered[pair]} recovered")
        for instant, _ in recover_rows[pair]:
            by_then = sum(points for at, points in recover_rows[pair] if at <= instant)
            owed_by_then = sum(points for at, points in unrecovered_at[pair] if at <= instant)
            if by_then > owed_by_then:
                out.append(f"{beneficiary} level {level}: {by_then} points recovered by rows dated up to {instant},"
                           f" but clawbacks dated by then left only {owed_by_then} unrecovered")
        if balances_after_level is not None and outstanding[pair] > 0:
            balance = balances_after_level[level].get(beneficiary, 0)
            if balance != 0:
                out.append(f"{beneficiary} level {level}: {outstanding[pair]} points outstanding while the balance"
                           f" was {balance} after that level's run")
    return out


# ── expiry: lots ───────────────────────────────────────────────────────────────

def lots_and_debits(rows: Iterable[LedgerRow]) -> tuple[list[tuple[LedgerRow, int]], list[LedgerRow]]:
    """One user's ledger as a FIFO stack: the lots (positive rows, each reduced by its own clawback
    `clawback:{lot key}`) and the consuming debits (every negative row but the own clawbacks), each in
    (created_at, id) order."""
    rows = sorted(rows, key=lambda row: (row.created_at, row.id))
    lot_keys = {row.key for row in rows if row.delta > 0 and row.key}
    own_clawbacks = {row.key[len("clawback:"):]: row for row in rows
                     if row.delta < 0 and row.key and row.key.startswith("clawback:")
                     and row.key[len("clawback:"):] in lot_keys}
    lots = [(row, row.delta + (own_clawbacks[row.key].delta if row.key in own_clawbacks else 0))
            for row in rows if row.delta > 0]
    own = {id(row) for row in own_clawbacks.values()}
    debits = [row for row in rows if row.delta < 0 and id(row) not in own]
    return lots, debits


def expired_by(rows: Iterable[LedgerRow], t: datetime, months: int) -> tuple[int, int]:
    """(E(t), D): the lots created before t − N months, and the consuming debits."""
    lots, debits = lots_and_debits(rows)
    cutoff = add_months(t, -months)
    return (sum(size for row, size in lots if row.created_at < cutoff), sum(-row.delta for row in debits))


def due(rows: Iterable[LedgerRow], as_of: datetime, months: int) -> int:
    lots_before, debits = expired_by(rows, as_of, months)
    return lots_before - debits


def expired_points_of(rows: Iterable[LedgerRow], key: str) -> int:
    """The points of the lot keyed `key` already consumed by EXPIRY rows: the overlap of its range in the
    FIFO stack with the ranges the EXPIRY rows consume."""
    lots, debits = lots_and_debits(rows)
    start = 0
    for row, size in lots:
        if row.key == key:
            break
        start += size
    else:
        return 0
    end, consumed, overlap = start + size, 0, 0
    for row in debits:
        if row.type == EXPIRY:
            overlap += max(0, min(end, consumed - row.delta) - max(start, consumed))
        consumed -= row.delta
    return overlap


def expire_run_violations(*, as_of: datetime, months: int, before: list[LedgerRow],
                          after: list[LedgerRow]) -> list[str]:
    """One run of expire-points at `as_of`: exactly one EXPIRY row of −due for every user whose due (on the
    ledger it saw) was above 0, dated `as_of`, under `expiry:{user}:{as-of}[:{n}]`; nothing else."""
    seen = {row.id for row in before}
    new = [row for row in after if row.id not in seen]
    by_user: dict[uuid.UUID, list[LedgerRow]] = defaultdict(list)
    for row in before:
        by_user[row.user].append(row)
    out = []
    written: dict[uuid.UUID, list[LedgerRow]] = defaultdict(list)
    for row in new:
        written[row.user].append(row)
    for user in set(by_user) | set(written):
        owed = due(by_user[user], as_of, months) if months else 0
        rows = written.get(user, [])
        if owed <= 0 and rows:
            out.append(f"expire-points wrote {[(r.type, r.delta, r.key) for r in rows]} for {user}, who owed nothing")
        elif owed > 0 and [(r.type, r.delta, r.ref_id, r.created_at) for r in rows] != [(EXPIRY, -owed, None, as_of)]:
            out.append(f"expire-points wrote {[(r.type, r.delta, r.key, r.created_at) for r in rows]} for {user};"
                       f" owed one EXPIRY of {-owed} at {as_of}")
        elif rows and not (rows[0].key or "").startswith(f"expiry:{user}:"):
            out.append(f"expire-points keyed {user}'s EXPIRY row {rows[0].key}")
    return out


def clawback_pricing_violations(*, level: int, as_of: datetime, ledger_before: list[LedgerRow],
                                before: list[Reward], after: list[Reward]) -> list[str]:
    """A run in one batch: each clawback it made took min(points − expired, the balance less the earlier
    clawbacks of the run for the same beneficiary, in key order), and `expired` is the overlap of the
    reward's lot with the EXPIRY rows of the ledger it saw (however many clawbacks the beneficiary has in the
    run: the batch's clawbacks are priced before any is written, so none moves another's lot)."""
    was = {reward.key: reward for reward in before}
    clawed = sorted((reward for reward in after if not reward.standing and reward.key in was
                     and was[reward.key].standing), key=lambda reward: reward.key)
    rows_of: dict[uuid.UUID, list[LedgerRow]] = defaultdict(list)
    for row in ledger_before:
        rows_of[row.user].append(row)
    left = {user: sum(row.delta for row in rows) for user, rows in rows_of.items()}
    out = []
    for reward in clawed:
        balance = left.get(reward.beneficiary, 0)
        taken = min(reward.points - reward.expired_points, max(balance, 0))
        if reward.clawed_back_points != taken:
            out.append(f"clawback of {reward.key} ({reward.points} points, {reward.expired_points} expired) took"
                       f" {reward.clawed_back_points} from a balance of {balance}; owed {taken}")
        left[reward.beneficiary] = balance - reward.clawed_back_points
        expired = min(reward.points, expired_points_of(rows_of[reward.beneficiary], reward.key))
        if reward.expired_points != expired:
            out.append(f"clawback of {reward.key} counted {reward.expired_points} points expired; the stack of"
                       f" {reward.beneficiary}'s ledger says {expired}")
    return out


def expiry_violations(ledger: list[LedgerRow], as_of: datetime, months: int) -> list[str]:
    """After expire-points at `as_of`, no user has due > 0."""
    if months == 0:
        return []
    by_user: dict[uuid.UUID, list[LedgerRow]] = defaultdict(list)
    for row in ledger:
        by_user[row.user].append(row)
    return [f"{user}: {owed} points past their expiry at {as_of} are still unexpired"
            for user, rows in by_user.items() if (owed := due(rows, as_of, months)) > 0]


def expiring_by(rows: Iterable[LedgerRow], as_of: datetime, t: datetime, months: int) -> int:
    """X(t) of expiring-soon: max(0, E(t) − D) − max(0, E(as_of) − D)."""
    rows = list(rows)
    e_t, debits = expired_by(rows, t, months)
    e_now, _ = expired_by(rows, as_of, months)
    return max(0, e_t - debits) - max(0, e_now - debits)


# ── balances ──────────────────────────────────────────────────────────────────

def ledger_violations(ledger: list[LedgerRow], cache: dict[uuid.UUID, tuple[int, int, int]]) -> list[str]:
    """No ledger balance below zero; the cache row of every user equals the ledger's (balance, earned, spent)."""
    totals: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
    for row in ledger:
        total = totals[row.user]
        total[0] += row.delta
        total[1 if row.delta > 0 else 2] += row.delta
    out = []
    for user in set(totals) | set(cache):
        ledger_values = tuple(totals.get(user, (0, 0, 0)))
        if ledger_values[0] < 0:
            out.append(f"{user}: ledger balance {ledger_values[0]} < 0")
        if cache.get(user, (0, 0, 0)) != ledger_values:
            out.append(f"{user}: cache {cache.get(user)} != ledger (balance, earned, spent) {ledger_values}")
    return out
