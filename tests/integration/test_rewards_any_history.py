"""Exact under any history (issue 23 item 3): random histories of every way the data moves, checked
after a final run of the pipeline against a from-scratch reference of SPEC v3 and docs/rules.md
(tests/reference.py: plain Python, never the jobs' SQL).

A history is a seeded list of events, replayed against the database:
- relationships created in any status (chains, so level 2 exists; cycles and self-referrals at times),
  advanced or moved back in status, `rewarded_at` corrected (by a second, days, a month, cleared),
  referrer and level changed (so level-2 parents change), deleted, and re-inserted for the same
  referred user with a new id (other level, referrer, status, `rewarded_at`);
- payments added (any status, around month edges: Jan 31, Feb 29, a second before, at and after a
  boundary), `paid_at` moved within and across months or onto a boundary, `amount_cents` corrected,
  FAILED→PAID, PAID→REFUNDED, REFUNDED→PAID, removed;
- in some histories the feed is a view that unions in bad rows (NULL `paid_at`, amount, user or id, a
  negative amount, an unknown status, a duplicated id of a real payment), added and removed;
- app redemptions (never below zero) and grants (positive and negative) at any instant;
- settings changed between runs (reward amounts, hold 0/3 days, recovery on/off, batch size 1/2/5000,
  months, expiry months);
- runs of any subset of recurring-rewards, level2-rewards, expire-points and expiring-soon, in any
  order, at any as-of (past ones, the same one twice);
- in half the histories (`expiry_focus`: expiry of 1-3 months, mostly one batch), two scripted episodes
  among the random events: a reward expired (in full, or in part after a redemption) and then clawed back;
  and a young reward clawed back while the beneficiary's older lots pass their expiry.

Then a final run of the four jobs in pipeline order at an as-of at or after every earlier one, and
the checks: the reward invariant of every (referred user, level, month) over the relationships and feed
as they are now, the basis record against the ledger, the recovery invariant of every beneficiary and
level, no points past their expiry, expiring-soon's file, no balance below zero, the cache equal to the
ledger (this last also after every run), bad feed rows counted in `skipped_feed_rows`, and a second
pipeline run that writes no reward, clawback or expiry.

A failure prints the seed, the settings and the event list. `REWARDS_ANY_HISTORY_SEED=N` replays one
seed (`-k replay`) and shrinks its event list to a minimal failing one. `REWARDS_ANY_HISTORY_EXAMPLES`
sets how many seeds the default run tries (from `REWARDS_ANY_HISTORY_FIRST_SEED`, 0 unless set); `pytest -m soak` runs `REWARDS_SOAK_HISTORIES` (10,000).
"""
from __future__ import annotations

import csv
import os
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import Engine, text

import jobs
from core.runner import run_job
from jobs import rules_audit
from jobs.settings import RewardAmount
from tests import reference as ref
from tests.builders import add_app_points, utc

EXAMPLES = int(os.environ.get("REWARDS_ANY_HISTORY_EXAMPLES", "40"))
FIRST_SEED = int(os.environ.get("REWARDS_ANY_HISTORY_FIRST_SEED", "0"))
SOAK_HISTORIES = int(os.environ.get("REWARDS_SOAK_HISTORIES", "10000"))
CHUNK = 4  # histories per test (and per database)
SOAK_CHUNK = 50
REPLAY_SEED = os.environ.get("REWARDS_ANY_HISTORY_SEED")

PIPELINE = ("recurring-rewards", "level2-rewards", "expire-points", "expiring-soon")
LEVEL_OF = {"recurring-rewards": 1, "level2-rewards": 2}
# Each user's own "first payment" (the default rewarded_at): month ends, a leap day, a second before midnight.
FIRST = [utc(2024, 1, 31, 12), utc(2024, 2, 29), utc(2024, 3, 31, 23, 59, 59), utc(2024, 6, 15, 8, 30),
         utc(2024, 8, 31), utc(2024, 11, 30), utc(2025, 1, 31), utc(2025, 3, 1)]
MONTH_STARTS = [ref.add_months(utc(2024, 2, 1), m) for m in range(0, 32)]
# As-of instants: month starts, mid-months, and exact month-k boundaries of the users' grids.
AS_OFS = sorted({*MONTH_STARTS, *(start + timedelta(days=14, hours=12) for start in MONTH_STARTS),
                 *(ref.add_months(first, k) for first in FIRST for k in (1, 2, 3, 6, 12, 13))})
LATE_AS_OFS = [t for t in AS_OFS if t >= utc(2025, 10, 1)]
SHIFTS = [-1, 0, 0, 1, 86_400, 12 * 86_400, 20 * 86_400, 27 * 86_400]  # seconds after month k's start
PAYMENT_MONTHS = [0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 11, 12, 13, -1]
AMOUNTS = [2000, 2000, 999, 12345, 5, 100_000, 0]
REWARD_PAIRS = [("10%", "5%"), ("10%", "5%"), ("150", "7"), ("33.3%", "100%"), ("0", "5%"), ("2.5%", "0%")]


# ── the generator ─────────────────────────────────────────────────────────────

def _tag(rng: random.Random) -> int:
    """The high 64 bits of a new row's id: random, so ids order rows arbitrarily, yet the same in every replay."""
    return rng.getrandbits(63) | 1


def _instant(rng: random.Random) -> datetime:
    return rng.choice(AS_OFS) + timedelta(seconds=rng.choice([0, 0, -1, 1, 3600, -86_400]))


def generate(seed: int) -> tuple[dict[str, Any], list[tuple]]:
    """(config, events) of one history: its settings at the start and every event, the final run last.
    Half the histories focus on expiry (`expiry_focus`): short expiry, mostly one batch, fewer random
    events, and scripted episodes (`_expiry_episode`) of the coincidences the expiry rules turn on."""
    rng = random.Random(seed)
    focus = rng.random() < 0.5
    users = rng.randint(6, 8)
    recurring, l2 = rng.choice(REWARD_PAIRS[:4] if focus else REWARD_PAIRS)
    config = {
        "users": users, "user_tags": [_tag(rng) for _ in range(users)],
        "recurring_months": rng.choice([12, 12, 12, 3, 1]), "l2_months": rng.choice([6, 6, 2, 1]),
        "recurring_reward": recurring, "l2_reward": l2,
        "points_per_usd": rng.choice(["100", "100", "100", "7", "1.5"]),
        "reward_hold_days": rng.choice([0, 0, 3]), "recovery": rng.choice([True, True, False]),
        "batch_size": rng.choice([5000, 5000, 2, 1]),
        "points_expiry_months": rng.choice([12, 3, 3, 2]),
        "expiry_notice_days": rng.choice([30, 30, 7, 0]),
        "feed_view": rng.random() < 0.3,
        "expiry_focus": focus,
    }
    if focus:
        config["points_expiry_months"] = rng.choice([1, 2, 3])
        config["batch_size"] = rng.choice([5000, 5000, 5000, 2])
    setup: list[tuple] = []
    for c in range(users):
        if rng.random() < 0.85:
            setup.append(_relate_event(rng, "relate", c, users))
    with_relationship = [event[1] for event in setup] or [0]
    for _ in range(rng.randint(10, 40)):
        setup.append(_pay_event(rng, rng.choice(with_relationship) if rng.random() < 0.85 else rng.randrange(users)))
    if config["feed_view"]:
        for _ in range(rng.randint(1, 3)):
            setup.append(_bad_event(rng, with_relationship))

    events: list[tuple] = []
    makers: list[tuple[float, Callable[[], tuple]]] = [
        (25, lambda: _run_event(rng, events)),
        (10, lambda: _pay_event(rng, rng.choice(with_relationship))),
        (8, lambda: ("move_paid", rng.randrange(64), rng.choice(
            [("seconds", -1), ("seconds", 1), ("seconds", 3600), ("seconds", -3600), ("seconds", 3 * 86_400),
             ("seconds", -3 * 86_400), ("seconds", 15 * 86_400), ("months", 1), ("months", -1),
             ("boundary", rng.choice([0, 1, 2, 3, 4]))]))),
        (5, lambda: ("amount", rng.randrange(64), rng.choice(AMOUNTS))),
        (10, lambda: ("flip", rng.randrange(64), *rng.choice(
            [("FAILED", "PAID"), ("PAID", "REFUNDED"), ("PAID", "REFUNDED"), ("PAID", "REFUNDED"),
             ("REFUNDED", "PAID")]))),
        (4, lambda: ("remove", rng.randrange(64))),
        (5, lambda: ("move_rewarded_at", rng.randrange(users), rng.choice(
            [("seconds", 1), ("seconds", -1), ("seconds", 86_400), ("seconds", -10 * 86_400), ("months", 1),
             ("months", -1), ("clear", 0), ("first", 0)]))),
        (5, lambda: ("set_status", rng.randrange(users),
                     rng.choice(["ACTIVE", "REWARDED", "REWARDED", "PENDING", "EXPIRED", "advance", "advance"]))),
        (4, lambda: ("rerefer", rng.randrange(users), rng.choice([1, 1, 2, 3, 0]))),
        (2, lambda: ("set_level", rng.randrange(users), rng.choice([1, 2]))),
        (4, lambda: _relate_event(rng, "reinsert", rng.randrange(users), users)),
        (1.5, lambda: ("unrelate", rng.randrange(users))),
        (2, lambda: _relate_event(rng, "relate", rng.randrange(users), users)),
        (10, lambda: ("redeem", rng.randrange(users), rng.choice([1.0, 1.0, 1.0, 0.5, 0.9, 0.3]), _instant(rng))),
        (4, lambda: ("grant", rng.randrange(users), rng.choice([50, 500, 3, 300, -0.5, -1.0]), _instant(rng))),
        (3, lambda: ("settings", _settings_change(rng))),
    ]
    if config["feed_view"]:
        makers += [(4, lambda: _bad_event(rng, with_relationship)), (1, lambda: ("unbad", rng.randrange(16)))]
    weights = [weight for weight, _ in makers]
    for _ in range(rng.randint(8, 25) if focus else rng.randint(15, 40)):
        events.append(rng.choices(makers, weights)[0][1]())
    if focus:
        paid_months_of = defaultdict(set)
        for event in setup + events:
            if event[0] == "pay":
                paid_months_of[event[1]].add(event[2])
        for kind in rng.sample(["expired", "young"], 2):
            at = rng.randint(0, len(events))
            events[at:at] = _expiry_episode(rng, kind, config, paid_months_of)
    run_as_ofs = [event[1] for event in events if event[0] == "run"]
    events.append(("final", max([rng.choice(LATE_AS_OFS), *run_as_ofs])))
    return config, setup + events


def _expiry_episode(rng: random.Random, kind: str, config: dict[str, Any],
                    paid_months_of: dict[int, set[int]]) -> list[tuple]:
    """A scripted run of events in which a level-1 reward of referred user c for B meets the expiry rules
    (docs/rules.md "What a clawback takes", "Expiry: lots"), N = 1-3 expiry months:
    - "expired": B earns the reward at T1, maybe spends part of it, expire-points runs past its expiry
      (T1 + N months), maybe B is granted points, then the reward's basis is refunded, corrected, moved or
      removed and the reward jobs run again: the clawback of an expired or partly expired reward;
    - "young": B holds an older lot (a grant at T0 < T1), maybe spends part, the reward earned at T1 is
      clawed back (points taken), then expire-points runs after T0 + N months but before T1 + N months:
      the old lot expires, the clawback of the young reward must not count as a debit of it."""
    users = config["users"]
    c = rng.randrange(users)
    offset = rng.choice([1, 2, 3])
    b = (c + offset) % users
    months = rng.choice([1, 2, 3])
    free = [k for k in (1, 2, 3) if k <= min(config["recurring_months"], 3) and k not in paid_months_of[c]]
    k = rng.choice(free or [1])
    paid_months_of[c].add(k)
    tag = _tag(rng)
    t1 = ref.add_months(FIRST[c], k + 1) + timedelta(days=3, hours=12)
    rewards = ("recurring-rewards", "level2-rewards")
    amend = ("amend", tag, *rng.choice([("status", "REFUNDED"), ("status", "REFUNDED"), ("amount", 777),
                                        ("months", 1), ("seconds", -40 * 86_400), ("remove", 0)]))
    out: list[tuple] = [("settings", (("points_expiry_months", months),)),
                        ("reinsert", c, offset, 1, "REWARDED", 0, _tag(rng))]
    if kind == "expired":
        if rng.random() < 0.4:  # an older lot too
            out.append(("grant", b, rng.choice([50, 300]), t1 - timedelta(days=rng.choice([2, 40]))))
        out += [("pay", c, k, rng.choice([0, 1, 86_400, 12 * 86_400]), "PAID", rng.choice([2000, 12345, 100_000]), tag),
                ("run", t1, rewards)]
        if rng.random() < 0.5:  # a redemption consumes part of the reward before it expires
            out.append(("spend", b, rng.choice([0.3, 0.5, 0.8]), t1 + timedelta(days=1)))
        t2 = ref.add_months(t1, months) + timedelta(seconds=rng.choice([1, 86_400, 5 * 86_400, 20 * 86_400]))
        out.append(("run", t2, rng.choice([("expire-points",), ("expire-points", "expiring-soon")])))
        if rng.random() < 0.7:  # points to take back from
            out.append(("grant", b, rng.choice([50, 300, 3000]), t2 + timedelta(hours=1)))
        out += [amend, ("run", t2 + timedelta(days=rng.choice([0, 0, 2])), rewards)]
        if rng.random() < 0.5:
            out.append(("run", ref.add_months(t2, months) + timedelta(days=1), ("expire-points",)))
    else:
        t0 = t1 - timedelta(days=rng.choice([10, 20, 45, 80]))
        out += [("grant", b, rng.choice([300, 500, 3000]), t0),
                ("pay", c, k, rng.choice([0, 1, 86_400, 12 * 86_400]), "PAID", rng.choice([2000, 12345, 100_000]), tag),
                ("run", t1, rewards)]
        if rng.random() < 0.4:
            out.append(("spend", b, rng.choice([0.1, 0.3]), t1 + timedelta(hours=2)))
        t2 = ref.add_months(t1, months) - timedelta(days=rng.choice([1, 3, 8]))
        out += [amend, ("run", t1 + timedelta(days=rng.choice([1, 5])), rewards)]
        if rng.random() < 0.3:
            out.append(("spend", b, 0.1, t1 + timedelta(days=6)))
        out.append(("run", t2, rng.choice([("expire-points",), ("expire-points", "expiring-soon"), PIPELINE])))
    return out


def _relate_event(rng: random.Random, kind: str, c: int, users: int) -> tuple:
    status = rng.choice(["REWARDED"] * 6 + ["ACTIVE", "PENDING", "EXPIRED"])
    rewarded_at = rng.choice([0] * 8 + [1, -86_400, 40 * 86_400, None]) if status == "REWARDED" else None
    return (kind, c, rng.choice([1, 1, 1, 1, 2, 0, 3, users - 1]), rng.choice([1, 1, 1, 2]), status, rewarded_at,
            _tag(rng))


def _pay_event(rng: random.Random, c: int) -> tuple:
    return ("pay", c, rng.choice(PAYMENT_MONTHS), rng.choice(SHIFTS),
            rng.choice(["PAID"] * 6 + ["FAILED", "REFUNDED"]), rng.choice(AMOUNTS), _tag(rng))


def _bad_event(rng: random.Random, users: list[int]) -> tuple:
    kind = rng.choice(["null_paid_at", "negative", "unknown_status", "null_amount", "null_user", "null_id",
                       "duplicate", "duplicate", "duplicate"])
    return ("bad", kind, rng.choice(users), rng.choice([0, 1, 2, 3]), rng.randrange(64), rng.random() < 0.5,
            _tag(rng))


def _run_event(rng: random.Random, events: list[tuple]) -> tuple:
    earlier = [event[1] for event in events if event[0] == "run"]
    as_of = rng.choice(earlier) if earlier and rng.random() < 0.15 else rng.choice(AS_OFS)
    roll = rng.random()
    if roll < 0.35:
        names = ["recurring-rewards", "level2-rewards"]
    elif roll < 0.55:
        names = list(PIPELINE)
    else:
        names = rng.sample(PIPELINE, rng.randint(1, 4))
    if rng.random() < 0.3:
        rng.shuffle(names)
    return ("run", as_of, tuple(names))


def _settings_change(rng: random.Random) -> tuple:
    choice = rng.choice(["rewards", "hold", "recovery", "recovery", "batch", "months", "expiry"])
    if choice == "rewards":
        recurring, l2 = rng.choice(REWARD_PAIRS)
        return (("recurring_reward", recurring), ("l2_reward", l2))
    if choice == "hold":
        return (("reward_hold_days", rng.choice([0, 3])),)
    if choice == "recovery":
        return (("recovery", rng.choice([True, False])),)
    if choice == "batch":
        return (("batch_size", rng.choice([1, 2, 5000])),)
    if choice == "months":
        return (("recurring_months", rng.choice([12, 3])), ("l2_months", rng.choice([6, 2])))
    return (("points_expiry_months", rng.choice([12, 3, 2, 1])),)


# ── the world in the database ─────────────────────────────────────────────────

FEED_VIEW = "public.any_history_feed"
FEED_EXTRA = "public.any_history_feed_extra"
SETTING_NAMES = ("recurring_months", "l2_months", "recurring_reward", "l2_reward", "points_per_usd",
                 "reward_hold_days", "recovery", "batch_size", "points_expiry_months", "expiry_notice_days")


class HistoryFailed(AssertionError):
    pass


@dataclass
class World:
    engine: Engine
    make_settings: Callable[..., Any]
    reports_dir: Path
    config: dict[str, Any]
    salt: int
    overrides: dict[str, Any] = field(default_factory=dict)
    as_ofs: list[datetime] = field(default_factory=list)
    reward_settings_changed: bool = False
    recovery_ever_on: bool = False
    final_runs: dict[str, Any] = field(default_factory=dict)
    balances_after_level: dict[int, dict[uuid.UUID, int]] = field(default_factory=dict)
    current_event: int = -1

    def __post_init__(self) -> None:
        self.users = [uuid.UUID(int=(tag << 64) | self.salt) for tag in self.config["user_tags"]]
        self.overrides = {name: self.config[name] for name in SETTING_NAMES}
        if self.config["feed_view"]:
            self._sql(f"CREATE TABLE {FEED_EXTRA} (n serial, id uuid, user_id uuid, amount_cents bigint,"
                      " status varchar(20), paid_at timestamptz, created_at timestamptz NOT NULL DEFAULT now(),"
                      " updated_at timestamptz NOT NULL DEFAULT now())")
            self._sql(f"CREATE VIEW {FEED_VIEW} AS SELECT id, user_id, amount_cents, status, paid_at, created_at,"
                      " updated_at FROM public.user_subscription_payments UNION ALL SELECT id, user_id,"
                      f" amount_cents, status, paid_at, created_at, updated_at FROM {FEED_EXTRA}")

    # -- helpers

    def _id(self, tag: int) -> uuid.UUID:
        return uuid.UUID(int=(tag << 64) | self.salt)

    def _sql(self, statement: str, params: dict | None = None) -> list:
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params or {})
            return list(result) if result.returns_rows else []

    @property
    def feed(self) -> str:
        return FEED_VIEW if self.config["feed_view"] else "public.user_subscription_payments"

    def settings(self) -> Any:
        values = dict(self.overrides)
        values["points_per_usd"] = Decimal(values["points_per_usd"])
        if self.config["feed_view"]:
            values["payments_table"] = FEED_VIEW
        return self.make_settings(**values)

    def rules(self) -> ref.Rules:
        o = self.overrides
        return ref.Rules(recurring_months=o["recurring_months"], l2_months=o["l2_months"],
                         recurring_reward=RewardAmount.parse(o["recurring_reward"]),
                         l2_reward=RewardAmount.parse(o["l2_reward"]), points_per_usd=Decimal(o["points_per_usd"]),
                         hold_days=o["reward_hold_days"], expiry_months=o["points_expiry_months"],
                         notice_days=o["expiry_notice_days"])

    def _relationship(self, c: int) -> Any:
        rows = self._sql("SELECT * FROM public.user_referral_relationships WHERE referred_user_id = :c",
                         {"c": self.users[c]})
        return rows[0] if rows else None

    def _payment(self, index: int, status: str | None = None) -> Any:
        """The index-th (modulo their number) of the history's payments, in id order (the same in every replay)."""
        rows = self._sql("SELECT id, user_id, paid_at FROM public.user_subscription_payments"
                         " WHERE user_id = ANY(CAST(:users AS uuid[])) AND (CAST(:status AS text) IS NULL"
                         " OR status = :status) ORDER BY id", {"users": [str(u) for u in self.users], "status": status})
        return rows[index % len(rows)] if rows else None

    # -- events

    def apply(self, event: tuple) -> None:
        getattr(self, "_" + event[0])(*event[1:])

    def _relate(self, c: int, offset: int, level: int, status: str, rewarded_at: int | None, tag: int) -> None:
        if self._relationship(c) is None:
            self._insert_relationship(c, offset, level, status, rewarded_at, tag)

    def _reinsert(self, c: int, offset: int, level: int, status: str, rewarded_at: int | None, tag: int) -> None:
        self._sql("DELETE FROM public.user_referral_relationships WHERE referred_user_id = :c", {"c": self.users[c]})
        self._insert_relationship(c, offset, level, status, rewarded_at, tag)

    def _insert_relationship(self, c: int, offset: int, level: int, status: str, rewarded_at: int | None,
                             tag: int) -> None:
        self._sql("INSERT INTO public.user_referral_relationships (id, referrer_user_id, referred_user_id,"
                  " referral_code, level, status, created_at, rewarded_at) VALUES (:id, :referrer, :referred, 'C',"
                  " :level, :status, :created_at, :rewarded_at)",
                  {"id": self._id(tag), "referrer": self.users[(c + offset) % len(self.users)],
                   "referred": self.users[c], "level": level, "status": status, "created_at": FIRST[c] - timedelta(days=9),
                   "rewarded_at": None if rewarded_at is None else FIRST[c] + timedelta(seconds=rewarded_at)})

    def _unrelate(self, c: int) -> None:
        self._sql("DELETE FROM public.user_referral_relationships WHERE referred_user_id = :c", {"c": self.users[c]})

    def _set_status(self, c: int, status: str) -> None:
        row = self._relationship(c)
        if row is None:
            return
        if status == "advance":
            status = {"PENDING": "ACTIVE", "ACTIVE": "REWARDED"}.get(row.status, row.status)
        rewarded_at = row.rewarded_at if row.rewarded_at or status != "REWARDED" else FIRST[c]
        self._sql("UPDATE public.user_referral_relationships SET status = :status, rewarded_at = :rewarded_at"
                  " WHERE id = :id", {"status": status, "rewarded_at": rewarded_at, "id": row.id})

    def _move_rewarded_at(self, c: int, move: tuple) -> None:
        how, amount = move
        row = self._relationship(c)
        if row is None:
            return
        if how == "clear":
            rewarded_at = None
        elif how == "first" or row.rewarded_at is None:
            rewarded_at = FIRST[c]
        elif how == "months":
            rewarded_at = ref.add_months(row.rewarded_at, amount)
        else:
            rewarded_at = row.rewarded_at + timedelta(seconds=amount)
        self._sql("UPDATE public.user_referral_relationships SET rewarded_at = :t WHERE id = :id",
                  {"t": rewarded_at, "id": row.id})

    def _rerefer(self, c: int, offset: int) -> None:
        self._sql("UPDATE public.user_referral_relationships SET referrer_user_id = :referrer"
                  " WHERE referred_user_id = :c",
                  {"referrer": self.users[(c + offset) % len(self.users)], "c": self.users[c]})

    def _set_level(self, c: int, level: int) -> None:
        self._sql("UPDATE public.user_referral_relationships SET level = :level WHERE referred_user_id = :c",
                  {"level": level, "c": self.users[c]})

    def _pay(self, c: int, k: int, shift: int, status: str, cents: int, tag: int) -> None:
        self._sql("INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                  " VALUES (:id, :user, :cents, :status, :paid_at)",
                  {"id": self._id(tag), "user": self.users[c], "cents": cents, "status": status,
                   "paid_at": ref.add_months(FIRST[c], k) + timedelta(seconds=shift)})

    def _move_paid(self, index: int, move: tuple) -> None:
        payment = self._payment(index)
        if payment is None:
            return
        how, amount = move
        if how == "seconds":
            paid_at = payment.paid_at + timedelta(seconds=amount)
        elif how == "months":
            paid_at = ref.add_months(payment.paid_at, amount)
        else:  # exactly onto month `amount`'s boundary of the user's first-payment grid
            paid_at = ref.add_months(FIRST[self.users.index(payment.user_id)], amount)
        self._sql("UPDATE public.user_subscription_payments SET paid_at = :t WHERE id = :id",
                  {"t": paid_at, "id": payment.id})

    def _amount(self, index: int, cents: int) -> None:
        payment = self._payment(index)
        if payment is not None:
            self._sql("UPDATE public.user_subscription_payments SET amount_cents = :cents WHERE id = :id",
                      {"cents": cents, "id": payment.id})

    def _flip(self, index: int, before: str, after: str) -> None:
        payment = self._payment(index, before)
        if payment is not None:
            self._sql("UPDATE public.user_subscription_payments SET status = :status WHERE id = :id",
                      {"status": after, "id": payment.id})

    def _remove(self, index: int) -> None:
        payment = self._payment(index)
        if payment is not None:
            self._sql("DELETE FROM public.user_subscription_payments WHERE id = :id", {"id": payment.id})

    def _amend(self, tag: int, how: str, value: Any) -> None:
        """A change to the payment of tag `tag` (a scripted episode's basis), if it is still there."""
        payment = self._sql("SELECT id, paid_at FROM public.user_subscription_payments WHERE id = :id",
                            {"id": self._id(tag)})
        if not payment:
            return
        if how == "remove":
            self._sql("DELETE FROM public.user_subscription_payments WHERE id = :id", {"id": payment[0].id})
            return
        if how == "status":
            column, new = "status", value
        elif how == "amount":
            column, new = "amount_cents", value
        elif how == "months":
            column, new = "paid_at", ref.add_months(payment[0].paid_at, value)
        else:
            column, new = "paid_at", payment[0].paid_at + timedelta(seconds=value)
        self._sql(f"UPDATE public.user_subscription_payments SET {column} = :v WHERE id = :id",
                  {"v": new, "id": payment[0].id})

    def _bad(self, kind: str, c: int, k: int, index: int, same: bool, tag: int) -> None:
        row = {"id": self._id(tag), "user_id": self.users[c], "amount_cents": 2000, "status": "PAID",
               "paid_at": ref.add_months(FIRST[c], k)}  # a month's first instant: the basis, were it used
        if kind == "duplicate":
            payment = self._payment(index)
            if payment is None:
                return
            row.update(id=payment.id, user_id=payment.user_id,
                       paid_at=payment.paid_at if same else payment.paid_at - timedelta(days=20))
        elif kind == "null_paid_at":
            row["paid_at"] = None
        elif kind == "negative":
            row["amount_cents"] = -500
        elif kind == "unknown_status":
            row["status"] = "paid" if same else "CHARGEBACK"
        elif kind == "null_amount":
            row["amount_cents"] = None
        elif kind == "null_user":
            row["user_id"] = None
        elif kind == "null_id":
            row["id"] = None
        self._sql(f"INSERT INTO {FEED_EXTRA} (id, user_id, amount_cents, status, paid_at)"
                  " VALUES (:id, :user_id, :amount_cents, :status, :paid_at)", row)

    def _unbad(self, index: int) -> None:
        rows = self._sql(f"SELECT n FROM {FEED_EXTRA} ORDER BY n")
        if rows:
            self._sql(f"DELETE FROM {FEED_EXTRA} WHERE n = :n", {"n": rows[index % len(rows)].n})

    def _redeem(self, index: int, share: float, instant: datetime, type: str = "REDEMPTION_QUOTA") -> None:
        """The app spends part of the balance of the index-th user (modulo their number) of those with points,
        under the lock of the balance row (never below zero)."""
        ledger, _ = self.read_ledger()
        holders = sorted({self.users.index(row.user) for row in ledger})
        holders = [u for u in holders if sum(row.delta for row in ledger if row.user == self.users[u]) > 0]
        if not holders:
            return
        self._spend(holders[index % len(holders)], share, instant, type)

    def _spend(self, u: int, share: float, instant: datetime, type: str = "REDEMPTION_QUOTA") -> None:
        """The app spends part of user u's balance, under the lock of the balance row (never below zero)."""
        with self.engine.begin() as conn:
            conn.execute(text("SELECT 1 FROM public.user_point_balances WHERE user_id = :u FOR UPDATE"),
                         {"u": self.users[u]})
            balance = conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                        " WHERE user_id = :u"), {"u": self.users[u]}).scalar_one()
            points = int(balance * share)
            if points > 0:
                add_app_points(conn, user=self.users[u], delta=-points, type=type, created_at=instant)

    def _grant(self, u: int, points: float, instant: datetime) -> None:
        if points < 0:  # a negative grant: the admin takes points back, from one who holds some
            self._redeem(u, -points, instant, type="ADMIN_GRANT")
            return
        with self.engine.begin() as conn:
            add_app_points(conn, user=self.users[u], delta=int(points), type="ADMIN_GRANT", created_at=instant)

    def _settings(self, changes: tuple) -> None:
        for name, value in changes:
            if name in ("recurring_reward", "l2_reward") and value != self.overrides[name]:
                self.reward_settings_changed = True
            self.overrides[name] = value

    def _run(self, as_of: datetime, names: tuple[str, ...]) -> None:
        for name in names:
            self._run_one(name, as_of)

    def _run_one(self, name: str, as_of: datetime) -> Any:
        """One run, then every rule it answers for, checked against the reference on the data it saw."""
        settings, rules = self.settings(), self.rules()
        level = LEVEL_OF.get(name)
        if level and settings.recovery:
            self.recovery_ever_on = True
        before = self.read() if level else None
        ledger_before = before["ledger"] if level else self.read_ledger()[0]
        result = run_job(jobs.JOBS[name], settings=settings, engine=self.engine, as_of=as_of)
        self.as_ofs.append(as_of)
        if result.status != "SUCCEEDED":
            raise HistoryFailed(f"{name} at {as_of} ended {result.status}: {result.error}")
        ledger, cache = self.read_ledger()
        problems = ref.ledger_violations(ledger, cache)
        if level:
            after = self.read()["rewards"]
            problems += ref.run_violations(level=level, as_of=as_of, rules=rules, relationships=before["relationships"],
                                           feed=before["feed"], before=before["rewards"], after=after)
            if settings.batch_size >= 5000:  # one batch: the clawbacks are priced on the ledger the run saw
                problems += ref.clawback_pricing_violations(level=level, as_of=as_of, ledger_before=ledger_before,
                                                            before=before["rewards"], after=after)
            if settings.recovery:
                problems += ref.recovered_after_run(level=level, as_of=as_of, rewards=after, ledger=ledger)
            problems += self._check_skipped_feed_rows(result, before["feed"])
        elif name == "expire-points":
            problems += ref.expiry_violations(ledger, as_of, rules.expiry_months)
            problems += ref.expire_run_violations(as_of=as_of, months=rules.expiry_months, before=ledger_before,
                                                  after=ledger)
        elif name == "expiring-soon":
            problems += self._check_expiring_soon(ledger, rules, as_of, result)
        if problems:
            raise HistoryFailed(f"{name} at {as_of} (settings {self._settings_line()}):\n      "
                                + "\n      ".join(problems[:20]))
        return result

    def _settings_line(self) -> str:
        return ", ".join(f"{name}={self.overrides[name]}" for name in SETTING_NAMES)

    def _final(self, as_of: datetime) -> None:
        assert all(earlier <= as_of for earlier in self.as_ofs)
        self.final_as_of = as_of
        for name in PIPELINE:
            self.final_runs[name] = self._run_one(name, as_of)
            if name in ("recurring-rewards", "level2-rewards"):
                ledger, _ = self.read_ledger()
                balances: dict[uuid.UUID, int] = defaultdict(int)
                for row in ledger:
                    balances[row.user] += row.delta
                self.balances_after_level[1 if name == "recurring-rewards" else 2] = dict(balances)

    # -- reading the database into the reference's values

    def _users_param(self) -> dict:
        return {"users": [str(u) for u in self.users]}

    def read_ledger(self) -> tuple[list[ref.LedgerRow], dict[uuid.UUID, tuple[int, int, int]]]:
        ledger = [ref.LedgerRow(row.id, row.user_id, row.delta, row.type, row.ref_id, row.idempotency_key, row.created_at)
                  for row in self._sql("SELECT id, user_id, delta, type, ref_id, idempotency_key, created_at"
                                       " FROM public.user_point_transactions WHERE user_id = ANY(CAST(:users AS uuid[]))",
                                       self._users_param())]
        cache = {row.user_id: (row.balance, row.total_earned, row.total_spent)
                 for row in self._sql("SELECT user_id, balance, total_earned, total_spent FROM public.user_point_balances"
                                      " WHERE user_id = ANY(CAST(:users AS uuid[]))", self._users_param())}
        return ledger, cache

    def read(self) -> dict[str, Any]:
        relationships = [ref.Relationship(r.id, r.referrer_user_id, r.referred_user_id, r.level, r.status, r.rewarded_at)
                         for r in self._sql("SELECT * FROM public.user_referral_relationships"
                                            " WHERE referred_user_id = ANY(CAST(:users AS uuid[]))", self._users_param())]
        feed = [ref.FeedRow(r.id, r.user_id, r.amount_cents, r.status, r.paid_at)
                for r in self._sql(f"SELECT id, user_id, amount_cents, status, paid_at FROM {self.feed}")]
        rewards = [ref.Reward(r.idempotency_key, r.relationship_id, r.referred_user_id, r.level, r.month,
                              r.beneficiary_user_id, r.payment_id, r.basis_paid_at, r.basis_amount_cents, r.points,
                              r.rewarded_at, r.clawback_key, r.clawed_back_points, r.expired_points,
                              r.unrecovered_points, r.recovered_points, r.clawed_back_at)
                   for r in self._sql("SELECT * FROM public.referral_rewards"
                                      " WHERE beneficiary_user_id = ANY(CAST(:users AS uuid[]))", self._users_param())]
        ledger, cache = self.read_ledger()
        return {"relationships": relationships, "feed": feed, "rewards": rewards, "ledger": ledger, "cache": cache}

    # -- the checks

    def check(self) -> list[str]:
        as_of, rules, data = self.final_as_of, self.rules(), self.read()
        final_recovery = self.settings().recovery
        out = ref.reward_violations(rewards=data["rewards"], relationships=data["relationships"], feed=data["feed"],
                                    ledger=data["ledger"], rules=rules, as_of=as_of,
                                    fixed_prices=not self.reward_settings_changed)
        out += ref.recovery_violations(rewards=data["rewards"], ledger=data["ledger"],
                                       balances_after_level=self.balances_after_level if final_recovery else None,
                                       ever_recovered=self.recovery_ever_on)
        out += ref.expiry_violations(data["ledger"], as_of, rules.expiry_months)
        out += ref.ledger_violations(data["ledger"], data["cache"])
        if os.environ.get("REWARDS_ANY_HISTORY_STATS"):
            print("history stats:", self.stats(data, rules))
        if not out:
            out += self._check_rerun_writes_nothing_owed()
        if not out:
            out += self._check_rules_audit_finds_nothing()
        return out

    def _check_rules_audit_finds_nothing(self) -> list[str]:
        """The rules audit, reconcile's independent reading of the rules, finds nothing in this history
        (its users only: the ledger keeps the rows of the histories run before it in this database)."""
        mine = set(self.users)
        with self.engine.begin() as conn:
            findings = rules_audit.audit(conn, self.settings())
        return [f"the rules audit found {f.kind}: {f.detail} (user {f.user_id}, key {f.reward_key})"
                for f in findings if f.user_id in mine or f.referred_user_id in mine]

    def stats(self, data: dict[str, Any], rules: ref.Rules) -> dict[str, int]:
        """What a history exercised (REWARDS_ANY_HISTORY_STATS=1 prints it, to tune the generator)."""
        rewards, ledger = data["rewards"], data["ledger"]
        usable = ref.usable_feed(data["feed"])
        return {
            "paid_months": len(ref.paid_months(data["relationships"], usable, rules, self.final_as_of)),
            "rewards": len(rewards), "standing": sum(r.standing for r in rewards),
            "clawed_back": sum(not r.standing for r in rewards),
            "taken_0": sum(not r.standing and r.clawed_back_points == 0 for r in rewards),
            "expired_part": sum(r.expired_points > 0 for r in rewards),
            "unrecovered": sum(r.unrecovered_points > 0 for r in rewards),
            "recovered": sum(r.recovered_points > 0 for r in rewards),
            "rekeyed": sum(r.key.count(":") > 2 for r in rewards),
            "other_relationship": sum(r.referred in {x.referred for x in data["relationships"]}
                                      and r.relationship_id not in {x.id for x in data["relationships"]}
                                      for r in rewards),
            "expiry_rows": sum(row.type == "EXPIRY" for row in ledger),
            "recover_rows": sum((row.key or "").startswith("recover:") for row in ledger),
            "unusable_feed_rows": ref.skipped_feed_rows(data["feed"]),
            "runs": len(self.as_ofs),
        }

    def _check_skipped_feed_rows(self, result: Any, feed: list[ref.FeedRow]) -> list[str]:
        """The feed's unusable rows are counted in the run's stats (as job_runs holds them), none twice."""
        unusable = ref.skipped_feed_rows(feed)
        stats = self._sql("SELECT stats FROM public.job_runs WHERE id = :id", {"id": result.run_id})[0].stats
        counted = stats.get("skipped_feed_rows", 0)
        if counted > unusable or (unusable and not counted):
            return [f"the run counted {counted} skipped feed rows; the feed has {unusable} unusable"]
        return []

    def _check_expiring_soon(self, ledger: list[ref.LedgerRow], rules: ref.Rules, as_of: datetime,
                             run: Any) -> list[str]:
        """The file's rows add up, per user, to the points of the lots expiring in the window (X(window end))."""
        if rules.expiry_months == 0 or rules.notice_days == 0:
            return []
        path = self.reports_dir / f"expiring-{as_of:%Y%m%dT%H%M%SZ}-{run.run_id}.csv"
        if not path.exists():
            return [f"expiring-soon wrote no {path.name}"]
        by_user: dict[uuid.UUID, list[ref.LedgerRow]] = defaultdict(list)
        for row in ledger:
            by_user[row.user].append(row)
        listed: dict[uuid.UUID, int] = defaultdict(int)
        out = []
        end = as_of + timedelta(days=rules.notice_days)
        with path.open(newline="") as file:
            for line in csv.DictReader(file):
                user = uuid.UUID(line["user_id"])
                if user not in self.users:
                    continue  # another history's user (one database holds several)
                listed[user] += int(line["points"])
                balance = sum(row.delta for row in by_user[user])
                if int(line["points"]) <= 0 or int(line["balance"]) != balance or not (
                        as_of.date() <= datetime.fromisoformat(line["expires_on"]).date() <= end.date()):
                    out.append(f"expiring-soon row {dict(line)}: ledger balance {balance}, window {as_of}..{end}")
        for user in self.users:
            expected = ref.expiring_by(by_user[user], as_of, end, rules.expiry_months)
            if listed[user] != expected:
                out.append(f"expiring-soon lists {listed[user]} points of {user} expiring by {end}; the lots say"
                           f" {expected}")
        return out

    def _check_rerun_writes_nothing_owed(self) -> list[str]:
        """The pipeline again at the same as-of on the same data: no reward, clawback or expiry is owed any more
        (a recovery may be: level 1's may take what level 2 credited after it)."""
        before = {row.id for row in self.read_ledger()[0]}
        for name in PIPELINE:
            self._run_one(name, self.final_as_of)
        new = [row for row in self.read_ledger()[0] if row.id not in before and not (row.key or "").startswith("recover:")]
        rewards = self.read()["rewards"]
        return [f"a rerun of the pipeline at {self.final_as_of} wrote {row.type} {row.delta} {row.key}" for row in new] + \
            ref.recovery_violations(rewards=rewards, ledger=self.read_ledger()[0], balances_after_level=None,
                                    ever_recovered=self.recovery_ever_on)

    def drop_feed(self) -> None:
        self._sql(f"DROP VIEW IF EXISTS {FEED_VIEW}")
        self._sql(f"DROP TABLE IF EXISTS {FEED_EXTRA}")


# ── running one history ───────────────────────────────────────────────────────

def reset(engine: Engine) -> None:
    """Another history in the same database: the inputs and the runs go; the append-only ledger stays,
    its rows belonging to other users (every history's ids are salted)."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP VIEW IF EXISTS {FEED_VIEW}"))
        conn.execute(text(f"DROP TABLE IF EXISTS {FEED_EXTRA}"))
        for table in ("user_referral_relationships", "user_subscription_payments", "job_runs", "referral_rewards"):
            conn.execute(text(f"DELETE FROM public.{table}"))


def replay(engine: Engine, make_settings: Callable[..., Any], reports_dir: Path, config: dict[str, Any],
           events: list[tuple]) -> list[str]:
    """Replay `events` on a reset database; the violations found (empty when every rule holds)."""
    reset(engine)
    world = World(engine, make_settings, reports_dir, config, salt=random.getrandbits(63))
    try:
        for number, event in enumerate(events):
            world.current_event = number
            try:
                world.apply(event)
            except HistoryFailed as failure:
                return [f"at event #{number} {event!r}: {failure}"]
        return world.check()
    finally:
        world.drop_feed()


def describe(seed: int | None, config: dict[str, Any], events: list[tuple], problems: list[str]) -> str:
    lines = [f"history seed {seed}: {len(problems)} violation(s)", *(f"  - {p}" for p in problems[:25])]
    if len(problems) > 25:
        lines.append(f"  … and {len(problems) - 25} more")
    lines.append("config: " + repr({k: v for k, v in config.items() if k != "user_tags"}))
    lines.append("events:")
    lines += [f"  #{number} {event!r}," for number, event in enumerate(events)]
    return "\n".join(lines)


def run_history(engine: Engine, make_settings: Callable[..., Any], reports_dir: Path, seed: int) -> None:
    config, events = generate(seed)
    problems = replay(engine, make_settings, reports_dir, config, events)
    if problems:
        raise AssertionError(describe(seed, config, events, problems))


def shrink(engine: Engine, make_settings: Callable[..., Any], reports_dir: Path, config: dict[str, Any],
           events: list[tuple], still_fails: Callable[[list[str]], bool]) -> tuple[list[tuple], list[str]]:
    """A smaller event list that still fails (delta debugging: drop chunks, then single events; the final
    run always stays)."""
    problems = replay(engine, make_settings, reports_dir, config, events)
    assert still_fails(problems), "the history does not fail"
    body, final = list(events[:-1]), events[-1]
    chunk = max(1, len(body) // 2)
    while chunk >= 1:
        start = 0
        while start < len(body):
            candidate = body[:start] + body[start + chunk:]
            attempt = replay(engine, make_settings, reports_dir, config, [*candidate, final])
            if still_fails(attempt):
                body, problems = candidate, attempt
            else:
                start += chunk
        chunk //= 2
    return [*body, final], problems


# ── the tests ─────────────────────────────────────────────────────────────────

def run_histories(engine: Engine, make_settings: Callable[..., Any], reports_dir: Path, seeds: range) -> None:
    """Each seed's history in turn on one database; every failing one reported (seed, settings, events)."""
    failures = []
    for seed in seeds:
        try:
            run_history(engine, make_settings, reports_dir, seed)
        except AssertionError as failure:
            failures.append(str(failure))
    assert not failures, f"{len(failures)} of {len(seeds)} histories failed:\n\n" + "\n\n".join(failures)


def _chunks(first: int, count: int, size: int) -> list[Any]:
    """pytest parameters of `size` seeds each (a database per test, so a few histories share one)."""
    return [pytest.param(range(start, min(start + size, first + count)),
                         id=f"seeds-{start}-{min(start + size, first + count) - 1}")
            for start in range(first, first + count, size)]


@pytest.mark.slow
@pytest.mark.parametrize("seeds", _chunks(FIRST_SEED, EXAMPLES, CHUNK))
def test_any_history_ends_exact_after_a_final_run(engine, make_settings, tmp_path, seeds):
    run_histories(engine, make_settings, tmp_path / "reports", seeds)


@pytest.mark.soak
@pytest.mark.parametrize("seeds", _chunks(1_000_000, SOAK_HISTORIES, SOAK_CHUNK))
def test_soak_any_history_ends_exact_after_a_final_run(engine, make_settings, tmp_path, request, seeds):
    selected = request.config.getoption("markexpr") or ""
    if "soak" not in selected or "not soak" in selected:
        pytest.skip("the soak runs only when asked for: pytest -m soak")
    run_histories(engine, make_settings, tmp_path / "reports", seeds)


@pytest.mark.skipif(REPLAY_SEED is None, reason="set REWARDS_ANY_HISTORY_SEED=N to replay and shrink one history")
def test_replay_and_shrink_one_history(engine, make_settings, tmp_path):
    config, events = generate(int(REPLAY_SEED))
    problems = replay(engine, make_settings, tmp_path / "reports", config, events)
    if not problems:
        return
    first_kind = problems[0].split(":")[0][:40]
    minimal, minimal_problems = shrink(engine, make_settings, tmp_path / "reports", config, events,
                                       lambda found: bool(found))
    raise AssertionError(describe(int(REPLAY_SEED), config, events, problems) + "\n\nshrunk to:\n"
                         + describe(int(REPLAY_SEED), config, minimal, minimal_problems)
                         + f"\n(first violation of the full history began: {first_kind!r})")


# ── the reference's own footing ───────────────────────────────────────────────

def test_reference_month_arithmetic_is_postgresqls(engine):
    instants = [*FIRST, utc(2024, 3, 31), utc(2025, 5, 31, 12), utc(2024, 12, 31, 23, 59, 59)]
    with engine.connect() as conn:
        for instant in instants:
            for months in (-13, -12, -3, -2, -1, 1, 2, 11, 12, 13):
                in_postgres = conn.execute(text("SELECT CAST(:t AS timestamptz) + make_interval(months => :m)"),
                                           {"t": instant, "m": months}).scalar_one()
                assert ref.add_months(instant, months) == in_postgres, (instant, months)


def test_reference_skips_every_row_of_a_duplicated_id_and_incomplete_rows():
    a, b, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    at = utc(2025, 1, 1)
    rows = [ref.FeedRow(a, user, 100, "PAID", at), ref.FeedRow(a, user, 100, "PAID", at),
            ref.FeedRow(b, user, 100, "PAID", at), ref.FeedRow(None, user, 100, "PAID", at),
            ref.FeedRow(uuid.uuid4(), user, -1, "PAID", at), ref.FeedRow(uuid.uuid4(), user, 1, "paid", at),
            ref.FeedRow(uuid.uuid4(), user, 1, "FAILED", None), ref.FeedRow(uuid.uuid4(), None, 1, "PAID", at)]
    assert list(ref.usable_feed(rows)) == [b]
    assert ref.skipped_feed_rows(rows) == 7


def test_reference_lots_are_reduced_by_their_own_clawback_and_consumed_by_every_other_debit():
    user = uuid.uuid4()

    def row(delta: int, key: str | None, when: datetime, type: str = "ADMIN_GRANT") -> ref.LedgerRow:
        return ref.LedgerRow(uuid.uuid4(), user, delta, type, None, key, when)

    ledger = [row(100, None, utc(2024, 1, 1)), row(50, "recurring:x:1", utc(2024, 2, 1), "REFERRAL_RECURRING"),
              row(-30, "clawback:recurring:x:1", utc(2024, 3, 1), "REFERRAL_CLAWBACK"),
              row(-40, None, utc(2024, 4, 1), "REDEMPTION_QUOTA"),
              row(-10, f"recover:{user}:2024-04-02T00:00:00+00:00:1", utc(2024, 4, 2), "REFERRAL_CLAWBACK"),
              row(-5, "clawback:l2:y:0", utc(2024, 4, 3), "REFERRAL_CLAWBACK")]
    assert ref.due(ledger, utc(2025, 1, 15), 12) == 100 - 55
    assert ref.due(ledger, utc(2025, 3, 15), 12) == 120 - 55
    assert ref.expiring_by(ledger, utc(2025, 1, 15), utc(2025, 3, 15), 12) == 20
    assert ref.recover_key(f"recover:{user}:2024-04-02T00:00:00+00:00:1:3") == (user, utc(2024, 4, 2), 1, 3)
    assert ref.recover_key(f"recover:{user}:2024-04-02T00:00:00+00:00:2") == (user, utc(2024, 4, 2), 2, 1)
    assert ref.price(RewardAmount.parse("33.3%"), Decimal("1.5"), 12345) == 61  # floor(12345 × 0.333 × 0.015)
    assert ref.price(RewardAmount.parse("150"), Decimal("7"), 5) == 150
