"""The `random` shape's world: cli/sample_data.py's generator with every distribution from a drawn shape.

`generate` and `advance` mirror sample_data's (the same tables, steps and guarantees: deterministic
rows, the cache moved by exactly the app's rows, a little drift for reconcile, later loads keeping only
the redemptions the balance can pay) and run sample_data.sql's statements, the planning and payment ones
given the drawn shape (`sample_shape`); only the app's ledger rows are bench/random_world.sql's own, and
they go through the one ledger writer (`core.ledger.write_points`), as the demo's do.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Connection, Engine

from bench.random_shape import RandomShape, draw
from cli import sample_data
from core.ledger import write_points
from core.sql import Queries

_SECONDS_PER_YEAR = 365.25 * 86400
_BEGINNING = datetime(1900, 1, 1, tzinfo=timezone.utc)
_own = Queries(str(Path(__file__).with_name("random_world.sql")))

Progress = Callable[[str], None]


def sample_shape(shape: RandomShape) -> dict[str, float | None]:
    """The drawn shape as sample_data.sql's planning and payment statements take it (the parameters of
    sample_data.DEFAULT_SHAPE): the fields of the same name; one share for self-referrals and two-user
    cycles, with no floor; activated, the draws below the activated share."""
    drawn = shape.as_json()
    return {**{name: drawn[name] for name in sample_data.DEFAULT_SHAPE if name in drawn},
            "cycle_share": shape.self_referral_share, "least_self_referrals": 0,
            "activated_from": 0.0, "activated_to": shape.activated_share}


def users_until(shape: RandomShape, users: int, as_of: datetime, span_seconds: float, until: datetime) -> int:
    """How many users exist at `until` (the inverse of plan_users' sign-up time)."""
    growth = 1 + (until - as_of).total_seconds() / span_seconds
    return math.floor(users * growth ** shape.signup_growth) + 2


def ledger_plan(shape: RandomShape) -> dict[str, float]:
    """From the aimed ledger rows per user: ADMIN_GRANTs per user and redemptions per earning.

    Earnings per user besides the grants: a welcome per activated relationship and a first-payment
    reward per rewarded one (one relationship per referred user)."""
    referred = 0.98 * (1 - shape.unreferred_share)
    base = referred * shape.activated_share * (1 + shape.rewarded_share)
    grants = shape.grant_share * shape.ledger_rows_per_user / 2
    earnings = max(base + grants, 0.01)
    rows_per_earning = shape.ledger_rows_per_user / earnings
    return {"grants_mean": round(grants, 4), "redemptions_per_earning": round(max(0.0, rows_per_earning - 1), 4)}


def params(shape: RandomShape, *, users: int, seed: int, as_of: datetime, years: float,
           since: datetime, until: datetime) -> dict[str, Any]:
    span = years * _SECONDS_PER_YEAR
    return {"seed": seed, "users": users, "anchor_epoch": as_of.timestamp(), "span_seconds": span,
            "n_max": users_until(shape, users, as_of, span, until), "since": since, "until": until,
            **sample_shape(shape), **shape.params(), **ledger_plan(shape)}


def generate(engine: Engine, *, users: int, seed: int, as_of: datetime, years: float,
             progress: Progress | None = None) -> dict[str, int]:
    """Fill the empty, migrated database behind `engine` with the world of seed `seed`'s shape."""
    shape = draw(seed)
    say = progress or _quiet
    say(f"random shape, {shape.describe()}")
    with engine.connect() as conn:
        if any(conn.execute(sample_data._queries["count_rows"]).one()):
            raise sample_data.SampleDataError("the database already holds data; generate into a fresh database")
    _load(engine, params(shape, users=users, seed=seed, as_of=as_of, years=years, since=_BEGINNING, until=as_of),
          first_load=True, progress=say)
    return sample_data._analyze_and_count(engine, say)


def advance(engine: Engine, *, users: int, seed: int, as_of: datetime, years: float, until: datetime,
            since: datetime | None = None, progress: Progress | None = None) -> dict[str, int]:
    """Add the world's activity during (since, until] (since defaults to as_of), as sample_data.advance."""
    since = since or as_of
    if until <= since or since < as_of:
        raise ValueError("until: the window (since, until] must be non-empty and not before as_of")
    say = progress or _quiet
    _load(engine, params(draw(seed), users=users, seed=seed, as_of=as_of, years=years, since=since, until=until),
          first_load=False, progress=say)
    return sample_data._analyze_and_count(engine, say)


def _quiet(_message: str) -> None:
    return None


def _load(engine: Engine, values: dict[str, Any], *, first_load: bool, progress: Progress) -> None:
    bulk = first_load
    with engine.connect() as conn:
        _step(conn, progress, f"planning {values['n_max']} users", values,
              "create_rnd", "create_uid", "plan_users", "plan_relationships", "index_plans")
        _step(conn, progress, "referral codes", values, "insert_codes",
              rebuild="public.user_referral_codes" if bulk else None)
        _step(conn, progress, "referral relationships", values, "insert_relationships", "advance_relationships",
              rebuild="public.user_referral_relationships" if bulk else None)
        _step(conn, progress, "subscription payments", values, "insert_payments",
              rebuild="public.user_subscription_payments" if bulk else None)
        _step(conn, progress, "points ledger and balance cache", values,
              rebuild="public.user_point_transactions" if bulk else None,
              app_points="all_rows" if bulk else "affordable_rows")
        if first_load:
            _step(conn, progress, "balance cache drift",
                  {**values, "drifted_users": 5 + int(values["users"]) // 100_000}, "drift_cache")
        _step(conn, progress, "cleaning up", values, "drop_plans")


def _step(conn: Connection, progress: Progress, label: str, values: dict[str, Any], *names: str,
          rebuild: str | None = None, app_points: str | None = None) -> None:
    """sample_data._step (one transaction, indexes rebuilt after a bulk load) over both statement files;
    `app_points`: the fragment that keeps the app's points, written through the one ledger writer."""
    def statements() -> None:
        for name in names:
            conn.execute(sample_data._queries[name], values)
        if app_points is not None:
            candidates = _own.raw("app_points").format(kept=sample_data._queries.raw(app_points))
            write_points(conn, candidates, values, as_of=values["until"], own_dates=True)

    sample_data._step(conn, progress, label, values, rebuild=rebuild, then=statements)

