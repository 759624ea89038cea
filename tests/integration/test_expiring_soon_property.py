"""expiring-soon against a from-scratch reference of SPEC.md's rule, on random ledgers (hypothesis).

Each example draws a few users with a few earnings and debits dated around the cutoffs the notice window
crosses (exactly at a cutoff and a second either side, at month ends, long before, after as_of), an
as-of instant at or near a month end (Jan 31, Feb 28/29, Mar 28-31, May 28-31, Dec 30-31 at several hours) or on
an ordinary day, REWARDS_EXPIRY_NOTICE_DAYS of 1 to 30 and REWARDS_POINTS_EXPIRY_MONTHS of 1, 3 or 12.
The job's CSV rows for those users (user, points, expires_on, balance, in file order) must be exactly
the reference's: for each UTC day d meeting (as_of, as_of + notice days], X(min(end of d, window end))
- X(max(start of d, as_of)) where above 0, with X(t) = max(0, E(t) - D) - max(0, E(as_of) - D), and,
where a month end makes `t - N months` step back, the cutoff reached so far kept (jobs/expiring_soon.py).
"""
from __future__ import annotations

import csv
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterator
from uuid import UUID

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import HealthCheck, event, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import text

from core.runner import run_job
from jobs import expiring_soon
from tests.builders import add_app_points, new_id

Ledger = list[tuple[int, datetime]]  # (delta, created_at)
CsvRow = tuple[str, int, str, int]   # (user_id, points, expires_on, balance)

# ── the reference ────────────────────────────────────────────────────────────


def _months_before(instant: datetime, months: int) -> datetime:
    """PostgreSQL's `instant - interval 'N months'` in UTC: the day of month is clamped (Mar 31 - 1 month = Feb 28)."""
    return instant - relativedelta(months=months)


def _days_meeting(as_of: datetime, window_end: datetime) -> Iterator[tuple[date, datetime, datetime]]:
    """Each UTC day meeting (as_of, window_end], with the part of it the rule reads: (day, from, to).
    (A day that starts at window_end meets the window in one instant only: it has nothing to expire.)"""
    day = as_of.date()
    while (start := datetime.combine(day, time(), tzinfo=timezone.utc)) < window_end:
        yield day, max(start, as_of), min(start + timedelta(days=1), window_end)
        day += timedelta(days=1)


def _instants_read(as_of: datetime, window_end: datetime) -> list[datetime]:
    """The instants X is read at, in time order: as_of, each UTC midnight inside the window, its end."""
    return sorted({as_of, *(bound for _, start, end in _days_meeting(as_of, window_end) for bound in (start, end))})


def _kept_cutoffs(instants: list[datetime], months: int) -> dict[datetime, datetime]:
    """The cutoff in force at each instant the rule reads: `t - N months`, or the cutoff reached at an
    earlier instant when a month end steps it back (Mar 29 00:00 - 1 month < Mar 28 12:00 - 1 month)."""
    kept, reached = {}, None
    for instant in instants:
        cutoff = _months_before(instant, months)
        reached = cutoff if reached is None else max(reached, cutoff)
        kept[instant] = reached
    return kept


def _expirable(ledger: Ledger, cutoff: datetime) -> int:
    """max(0, E - D): points earned before the cutoff less every debit, whatever its date (FIFO)."""
    earned = sum(delta for delta, created_at in ledger if delta > 0 and created_at < cutoff)
    debited = sum(-delta for delta, _ in ledger if delta < 0)
    return max(0, earned - debited)


def _reference_rows(ledgers: dict[UUID, Ledger], as_of: datetime, notice_days: int, months: int) -> list[CsvRow]:
    window_end = as_of + timedelta(days=notice_days)
    days = list(_days_meeting(as_of, window_end))
    cutoff_at = _kept_cutoffs(_instants_read(as_of, window_end), months)
    rows = []
    for user, ledger in ledgers.items():
        def expiring_by(instant: datetime) -> int:  # X(t)
            return _expirable(ledger, cutoff_at[instant]) - _expirable(ledger, cutoff_at[as_of])

        for day, start, end in days:
            points = expiring_by(end) - expiring_by(start)
            if points > 0:
                rows.append((str(user), points, day.isoformat(), sum(delta for delta, _ in ledger)))
    return sorted(rows, key=lambda row: (row[2], row[0]))


def _a_cutoff_steps_back(as_of: datetime, notice_days: int, months: int) -> bool:
    window_end = as_of + timedelta(days=notice_days)
    cutoffs = [_months_before(instant, months) for instant in _instants_read(as_of, window_end)]
    return any(later < earlier for earlier, later in zip(cutoffs, cutoffs[1:]))


# ── the examples ─────────────────────────────────────────────────────────────

_AS_OF_DAYS = [date(2026, 1, 31), date(2026, 2, 27), date(2026, 2, 28), date(2026, 3, 1), date(2026, 3, 25),
               date(2026, 3, 31), date(2026, 4, 30), date(2026, 5, 31), date(2026, 6, 15), date(2026, 12, 31),
               date(2028, 2, 29), date(2028, 3, 31)]
# (N, day) where day - N months and the next day - N months fall on the same date: an as-of instant inside
# such a day has a later cutoff than the next midnight (Mar 28 12:00 - 1 month > Mar 29 00:00 - 1 month).
_STEP_BACK_DAYS = [(1, date(2026, 3, 28)), (1, date(2026, 3, 29)), (1, date(2026, 3, 30)), (1, date(2026, 5, 30)),
                   (1, date(2028, 3, 29)), (3, date(2026, 5, 28)), (3, date(2026, 12, 30)), (12, date(2028, 2, 28))]
_MONTHS = [1, 3, 12]
_AS_OF_TIMES = [time(0), time(0, 0, 1), time(6), time(12), time(18, 30), time(23, 59, 59)]
_SECOND = timedelta(seconds=1)
_TYPES = ("REFERRAL_WELCOME", "REFERRAL_RECURRING", "ADMIN_GRANT")
_DEBIT_TYPES = ("REDEMPTION_QUOTA", "EXPIRY", "REFERRAL_CLAWBACK")


def _month_ends_near(first_cutoff: datetime, last_cutoff: datetime) -> list[datetime]:
    """The last day of each month from the one before the first cutoff to the last cutoff's, at several
    hours, and the next month's first instant."""
    instants = []
    month = date(first_cutoff.year, first_cutoff.month, 1) - relativedelta(months=1)
    while month <= last_cutoff.date():
        next_month = month + relativedelta(months=1)
        last_day = datetime.combine(next_month - timedelta(days=1), time(), tzinfo=timezone.utc)
        instants += [last_day, last_day + timedelta(hours=12), last_day + timedelta(days=1) - _SECOND,
                     last_day + timedelta(days=1)]
        month = next_month
    return instants


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[datetime, int, int, list[Ledger]]:
    months, day = draw(st.one_of(st.sampled_from(_STEP_BACK_DAYS),
                                 st.tuples(st.sampled_from(_MONTHS), st.sampled_from(_AS_OF_DAYS))))
    as_of = datetime.combine(day, draw(st.sampled_from(_AS_OF_TIMES)), tzinfo=timezone.utc)
    notice_days = draw(st.sampled_from([1, 2, 7, 30]))
    window_end = as_of + timedelta(days=notice_days)
    first_cutoff, last_cutoff = _months_before(as_of, months), _months_before(window_end, months)
    cutoffs = [_months_before(instant, months) for instant in _instants_read(as_of, window_end)]
    created_at = st.one_of(
        st.sampled_from([cutoff + off for cutoff in cutoffs for off in (-_SECOND, timedelta(0), _SECOND)]),
        st.integers(-48, (notice_days + 2) * 24).map(lambda hours: first_cutoff + timedelta(hours=hours)),
        st.sampled_from(_month_ends_near(first_cutoff, last_cutoff)),
        st.sampled_from([first_cutoff - timedelta(days=400), as_of - timedelta(days=3), as_of + timedelta(hours=5)]),
    )
    delta = st.integers(-40, 119).map(lambda n: n + 1 if n >= 0 else n)  # never 0; about one debit in four
    row = st.tuples(delta, created_at)
    ledgers = draw(st.lists(st.lists(row, min_size=1, max_size=6), min_size=1, max_size=4))
    return as_of, notice_days, months, ledgers


# ── the job ──────────────────────────────────────────────────────────────────


def _insert(engine, ledgers: dict[UUID, Ledger]) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.job_runs"))  # each example starts as if first
        for user, ledger in ledgers.items():
            for number, (delta, created_at) in enumerate(ledger):
                kind = _TYPES[number % len(_TYPES)] if delta > 0 else _DEBIT_TYPES[number % len(_DEBIT_TYPES)]
                add_app_points(conn, user=user, delta=delta, type=kind, created_at=created_at)


def _job_rows(engine, settings, as_of: datetime) -> tuple[list[CsvRow], dict]:
    result = run_job(expiring_soon.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    with open(result.stats["file"], newline="") as file:
        lines = list(csv.reader(file))
    assert lines[0] == list(expiring_soon.CSV_HEADER)
    rows = [(user, int(points), expires_on, int(balance)) for user, points, expires_on, balance in lines[1:]]
    return rows, result.stats


def _stats_of(rows: list[CsvRow]) -> dict[str, int]:
    return {"users": len({row[0] for row in rows}), "points": sum(row[1] for row in rows), "rows": len(rows)}


@pytest.mark.slow
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=_scenarios())
def test_the_csv_says_what_the_reference_rule_says(engine, make_settings, scenario):
    as_of, notice_days, months, drawn = scenario
    # The ledger cannot be emptied (append-only), so each example has users of its own and reads only theirs.
    ledgers = {new_id(): ledger for ledger in drawn}
    settings = make_settings(expiry_notice_days=notice_days, points_expiry_months=months)
    _insert(engine, ledgers)

    every_row, stats = _job_rows(engine, settings, as_of)

    expected = _reference_rows(ledgers, as_of, notice_days, months)
    event("a cutoff steps back in the window" if _a_cutoff_steps_back(as_of, notice_days, months)
          else "cutoffs only move forward")
    event("some points expire" if expected else "nothing expires")
    ours = {str(user) for user in ledgers}
    assert [row for row in every_row if row[0] in ours] == expected
    assert {name: stats[name] for name in ("users", "points", "rows")} == _stats_of(every_row)
