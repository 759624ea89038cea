"""The liability schedule, breakage and one user's lots (jobs/liability.py), checked against what
expire-points then does: the schedule of an as-of says, month by month, what runs of expire-points at
the first instant of each month expire when nothing is spent."""
from __future__ import annotations

import calendar
import random
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import expire_points
from jobs.liability import breakage, liability_schedule, user_balance
from tests.builders import new_id, utc

AS_OF = utc(2026, 6, 15, 12)
MICROSECOND = timedelta(microseconds=1)


# ── building a ledger ────────────────────────────────────────────────────────

def _row(conn, user, delta, type_, at, key=None):
    """A ledger row and the cache beside it, as the app (or a job) writes them."""
    conn.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)"
                      " VALUES (:user, :delta, :type, :key, :at)"),
                 {"user": user, "delta": delta, "type": type_, "key": key, "at": at})
    conn.execute(text(
        "INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent)"
        " VALUES (:user, :delta, greatest(:delta, 0), least(:delta, 0))"
        " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + :delta,"
        " total_earned = b.total_earned + greatest(:delta, 0), total_spent = b.total_spent + least(:delta, 0)"),
        {"user": user, "delta": delta})


def _reward(conn, user, points, at, *, clawed=None, clawed_at=None):
    """A recurring reward (ledger row and its record), clawed back by `clawed` points at `clawed_at`."""
    relationship = new_id()
    key = f"recurring:{relationship}:1"
    _row(conn, user, points, "REFERRAL_RECURRING", at, key)
    clawback_key = None if clawed is None else f"clawback:{key}"
    conn.execute(text(
        "INSERT INTO public.referral_rewards (idempotency_key, relationship_id, level, month, payment_id,"
        " beneficiary_user_id, points, rewarded_at, clawback_key, clawed_back_points, unrecovered_points,"
        " clawed_back_at) VALUES (:key, :rel, 1, 1, gen_random_uuid(), :user, :points, :at, :ckey, :clawed,"
        " :unrecovered, :clawed_at)"),
        {"key": key, "rel": relationship, "user": user, "points": points, "at": at, "ckey": clawback_key,
         "clawed": clawed or 0, "unrecovered": 0 if clawed is None else points - clawed,
         "clawed_at": clawed_at})
    if clawed:
        _row(conn, user, -clawed, "REFERRAL_CLAWBACK", clawed_at, clawback_key)


def _recovery(conn, user, points, at):
    _row(conn, user, -points, "REFERRAL_CLAWBACK", at, f"recover:{user}:{at.isoformat()}:1")


def _expire(engine, settings, as_of):
    result = run_job(expire_points.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def _expired_at(engine, as_of, user=None):
    """The points the EXPIRY rows dated `as_of` took (of one user, or of all)."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(-sum(delta), 0) FROM public.user_point_transactions WHERE type = 'EXPIRY'"
            " AND created_at = :at AND (CAST(:user AS uuid) IS NULL OR user_id = :user)"),
            {"at": as_of, "user": user}).scalar_one())


def _schedule(engine, settings, as_of=AS_OF):
    with engine.connect() as conn:
        return liability_schedule(conn, as_of, settings)


def _months(schedule):
    return {month["month"]: month["points"] for month in schedule["months"] if month["points"]}


def _holds(schedule):
    parts = schedule["due_now_points"] + sum(m["points"] for m in schedule["months"]) + schedule["later_points"]
    return parts == schedule["outstanding_points"] == schedule["total_points"]


def first_instant(year, month):
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return utc(year, month, 1)


# ── the schedule ─────────────────────────────────────────────────────────────

def test_each_lot_expires_in_its_month_plus_n_and_the_parts_add_up_to_the_outstanding(engine, settings):
    user, other = new_id(), new_id()
    with engine.begin() as conn:
        _row(conn, user, 100, "ADMIN_GRANT", utc(2025, 5, 20))       # due now (cutoff 2025-06-15 12:00)
        _row(conn, user, 40, "ADMIN_GRANT", utc(2025, 6, 20))        # expires in June 2026
        _row(conn, user, 7, "ADMIN_GRANT", utc(2025, 8, 1))          # August 2026
        _row(conn, user, -30, "REDEMPTION_GIFT_CARD", utc(2025, 7, 1))  # takes 30 of the oldest lot
        _row(conn, other, 5, "ADMIN_GRANT", utc(2026, 6, 1))         # June 2027: later
        _row(conn, other, 9, "ADMIN_GRANT", AS_OF + MICROSECOND)     # after the as-of: not outstanding
    schedule = _schedule(engine, settings)
    assert schedule["outstanding_points"] == 122
    assert schedule["due_now_points"] == 70
    assert _months(schedule) == {"2026-06": 40, "2026-08": 7}
    assert schedule["later_points"] == 5
    assert [m["month"] for m in schedule["months"]] == [f"2026-{m:02d}" for m in range(6, 13)] + [
        f"2027-{m:02d}" for m in range(1, 6)]
    assert schedule["months"][0]["usd"] == "0.40" and schedule["usd"] == {"usd": "1.22", "points_per_usd": "100"}
    assert _holds(schedule)


@pytest.mark.parametrize("months, earned, expiry_month", [
    (1, utc(2026, 1, 31, 10), (2026, 2)),     # Jan 31 + 1 month = Feb 28: expires at the end of February
    (1, utc(2026, 3, 1), (2026, 4)),          # 00:00:00 of a month start: the next month, not this one
    (1, utc(2026, 2, 28, 23, 59, 59), (2026, 3)),
    (12, utc(2024, 2, 29, 8), (2025, 2)),     # Feb 29 + 12 months = Feb 28, 2025
    (12, utc(2024, 3, 31, 23), (2025, 3)),
    (3, utc(2025, 11, 30, 12), (2026, 2)),    # Nov 30 + 3 months = Feb 28
])
def test_a_lot_expires_in_the_calendar_month_n_months_after_it_was_earned_whatever_its_day(
        engine, make_settings, months, earned, expiry_month):
    """The 31st, Feb 29 and the first instant of a month: a lot earned in month m expires in month m + N;
    the run at the first instant of month m + N leaves it, that of m + N + 1 takes it; `balance`'s expiry
    instant is the last a run leaves it at."""
    settings = make_settings(points_expiry_months=months)
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 10, "ADMIN_GRANT", earned)
    as_of = first_instant(*expiry_month)   # the schedule starts with the expiry month
    label = f"{expiry_month[0]}-{expiry_month[1]:02d}"
    assert _months(_schedule(engine, settings, as_of)) == {label: 10}
    with engine.connect() as conn:
        lot, = user_balance(conn, user, as_of, settings)["lots"]
    expires_at = datetime.fromisoformat(lot["expires_at"])
    assert (expires_at.year, expires_at.month) == expiry_month
    for run_at, expired in [(first_instant(*expiry_month), 0), (expires_at, 0), (expires_at + MICROSECOND, 10)]:
        _expire(engine, settings, run_at)
        assert _expired_at(engine, run_at) == expired, run_at
    next_month = first_instant(expiry_month[0], expiry_month[1] + 1)
    assert expires_at + MICROSECOND <= next_month


def test_a_lot_clamped_to_a_short_month_expires_at_its_last_instant(engine, make_settings):
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 10, "ADMIN_GRANT", utc(2026, 1, 31, 10))
        _row(conn, user, 4, "ADMIN_GRANT", utc(2026, 1, 28, 10))
    with engine.connect() as conn:
        found = user_balance(conn, user, utc(2026, 2, 1), make_settings(points_expiry_months=1))
    assert [lot["expires_at"] for lot in found["lots"]] == ["2026-02-28T10:00:00+00:00",
                                                           "2026-02-28T23:59:59.999999+00:00"]
    assert found["expiring_next"] == {"expires_at": "2026-02-28T10:00:00+00:00", "points": 4}


def test_a_clawback_reduces_its_own_lot_and_never_postpones_older_ones(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 50, "ADMIN_GRANT", utc(2025, 7, 3))                          # July 2026
        _reward(conn, user, 80, utc(2025, 9, 9), clawed=30, clawed_at=utc(2026, 1, 5))  # 50 left, Sept 2026
        _reward(conn, user, 60, utc(2026, 2, 2), clawed=60, clawed_at=utc(2026, 3, 1))  # young, all clawed back
    schedule = _schedule(engine, settings)
    # The young clawback took its own 60, not the 50 of July: those still expire in July.
    assert _months(schedule) == {"2026-07": 50, "2026-09": 50}
    assert schedule["outstanding_points"] == 100 and schedule["later_points"] == 0 and _holds(schedule)
    # The same schedule as at an as-of before the clawbacks were dated: they are not in it.
    before = _schedule(engine, settings, utc(2025, 12, 31))
    assert before["outstanding_points"] == 130 and before["months"][6] == {"month": "2026-06", "points": 0,
                                                                            "usd": "0.00"}
    # The run at the first instant after each month expires that month's points.
    for month, points in {(2026, 7): 0, (2026, 8): 50, (2026, 9): 0, (2026, 10): 50}.items():
        _expire(engine, settings, first_instant(*month))
        assert _expired_at(engine, first_instant(*month)) == points, month


def test_a_clawback_meeting_a_lot_already_past_expiry(engine, settings):
    """A reward past its expiry, not yet expired, clawed back in part: what is left of it is due now."""
    user = new_id()
    with engine.begin() as conn:
        _reward(conn, user, 100, utc(2025, 3, 3), clawed=70, clawed_at=utc(2026, 6, 1))
        _row(conn, user, 20, "ADMIN_GRANT", utc(2025, 12, 24))
    schedule = _schedule(engine, settings)
    assert schedule["due_now_points"] == 30 and _months(schedule) == {"2026-12": 20} and _holds(schedule)
    _expire(engine, settings, AS_OF)
    assert _expired_at(engine, AS_OF) == 30


def test_a_recovery_consumes_the_oldest_lots_like_any_debit(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 40, "ADMIN_GRANT", utc(2025, 7, 1))
        _row(conn, user, 40, "ADMIN_GRANT", utc(2025, 10, 1))
        _recovery(conn, user, 50, utc(2026, 1, 1))
    schedule = _schedule(engine, settings)
    assert _months(schedule) == {"2026-10": 30} and schedule["outstanding_points"] == 30 and _holds(schedule)
    with engine.connect() as conn:
        found = user_balance(conn, user, AS_OF, settings)
    assert [lot["remaining"] for lot in found["lots"]] == [0, 30]
    assert found["expiring_next"] == {"expires_at": "2026-10-01T00:00:00+00:00", "points": 30}


def test_earlier_expiry_rows_are_debits_and_no_expiry_means_everything_is_later(engine, make_settings):
    user = new_id()
    settings = make_settings()
    with engine.begin() as conn:
        _row(conn, user, 40, "ADMIN_GRANT", utc(2024, 12, 1))
        _row(conn, user, 25, "ADMIN_GRANT", utc(2025, 8, 8))
    _expire(engine, settings, utc(2026, 1, 1))
    schedule = _schedule(engine, settings)
    assert schedule["due_now_points"] == 0 and _months(schedule) == {"2026-08": 25} and _holds(schedule)
    never = _schedule(engine, make_settings(points_expiry_months=0))
    assert never["later_points"] == never["outstanding_points"] == 25 and not _months(never)


def test_a_close_counts_the_rows_dated_before_the_next_months_first_instant(engine, settings):
    """At a month's close the as-of is the next month's first instant and the closing is the ledger dated
    before it (before_as_of); reconcile's outstanding counts the rows dated at its as-of too."""
    user, june = new_id(), utc(2026, 6, 1)
    with engine.begin() as conn:
        _row(conn, user, 40, "ADMIN_GRANT", utc(2025, 5, 31, 23, 59, 59))   # due at June 1: expires by the run then
        _row(conn, user, 15, "ADMIN_GRANT", utc(2025, 6, 1))
        _row(conn, user, -5, "REDEMPTION_GIFT_CARD", june)                   # dated exactly at the as-of
    with engine.connect() as conn:
        reconcile_view = liability_schedule(conn, june, settings)
        close_view = liability_schedule(conn, june, settings, before_as_of=True)
    assert (reconcile_view["outstanding_points"], close_view["outstanding_points"]) == (50, 55)
    assert (reconcile_view["due_now_points"], close_view["due_now_points"]) == (35, 40)
    assert _months(reconcile_view) == _months(close_view) == {"2026-06": 15}
    assert _holds(reconcile_view) and _holds(close_view)
    assert close_view["months"][0]["month"] == "2026-06"


def test_no_price_means_no_money(engine, make_settings):
    with engine.begin() as conn:
        _row(conn, new_id(), 40, "ADMIN_GRANT", utc(2025, 7, 1))
    schedule = _schedule(engine, make_settings(points_per_usd=0))
    assert schedule["usd"] is None and {m["usd"] for m in schedule["months"]} == {None}


# ── one user's balance ───────────────────────────────────────────────────────

def test_a_users_balance_at_an_instant_with_lots_and_totals(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        _row(conn, user, 100, "ADMIN_GRANT", utc(2025, 1, 10))
        _reward(conn, user, 50, utc(2025, 8, 1), clawed=20, clawed_at=utc(2025, 9, 1))
        _row(conn, user, -30, "REDEMPTION_GIFT_CARD", utc(2025, 3, 1))
        _row(conn, user, 5, "ADMIN_GRANT", utc(2026, 7, 1))    # after the as-of
    _expire(engine, settings, utc(2026, 2, 1))                  # expires 70 of the first lot
    with engine.connect() as conn:
        found = user_balance(conn, user, AS_OF, settings)
        before = user_balance(conn, user, utc(2025, 1, 1), settings)
        nobody = user_balance(conn, new_id(), AS_OF, settings)
    assert found["balance"] == 30 and found["earned"] == 150 and found["spent"] == 30
    assert found["expired"] == 70 and found["clawed_back"] == 20
    assert found["balance"] == found["earned"] - found["spent"] - found["expired"] - found["clawed_back"]
    assert [(lot["points"], lot["remaining"], lot["expires_at"]) for lot in found["lots"]] == [
        (100, 0, "2026-01-10T00:00:00+00:00"), (50, 30, "2026-08-01T00:00:00+00:00")]
    assert found["expiring_next"] == {"expires_at": "2026-08-01T00:00:00+00:00", "points": 30}
    assert before["balance"] == 0 and before["lots"] == [] and before["expiring_next"] is None
    assert nobody is None


# ── breakage ─────────────────────────────────────────────────────────────────

def test_breakage_is_expired_over_issued_in_the_twelve_months_before_the_as_of(engine, settings):
    rng = random.Random(7)
    rows = []
    with engine.begin() as conn:
        for _ in range(300):
            at = utc(2024, 1, 1) + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400))
            delta = rng.choice([rng.randint(1, 500), -rng.randint(1, 100)])
            type_ = "ADMIN_GRANT" if delta > 0 else rng.choice(["EXPIRY", "REDEMPTION_GIFT_CARD"])
            rows.append((delta, type_, at))
            _row(conn, new_id(), delta, type_, at)
        for edge in (utc(2025, 6, 15, 12), AS_OF):           # the window is [as_of - 12 months, as_of)
            rows.append((11, "ADMIN_GRANT", edge))
            _row(conn, new_id(), 11, "ADMIN_GRANT", edge)
    start = utc(2025, 6, 15, 12)
    issued = sum(d for d, _, at in rows if d > 0 and start <= at < AS_OF)
    expired = sum(-d for d, t, at in rows if t == "EXPIRY" and start <= at < AS_OF)
    with engine.connect() as conn:
        found = breakage(conn, AS_OF, settings)
        empty = breakage(conn, utc(2020, 1, 1), settings)
    assert found == {"from": start.isoformat(), "to": AS_OF.isoformat(), "expired_points": expired,
                     "issued_points": issued,
                     "rate": str((Decimal(expired) / issued).quantize(Decimal("0.0001"), ROUND_HALF_UP))}
    assert empty["rate"] is None and empty["issued_points"] == 0


# ── randomized: the schedule against expire-points, month by month ──────────

def _random_instant(rng, start, end):
    """Mostly anywhere; often on an edge: a month's first instant, its last second, the 29th-31st."""
    kind = rng.random()
    if kind < 0.6:
        return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))
    year, month = rng.randint(start.year, end.year), rng.randint(1, 12)
    last = calendar.monthrange(year, month)[1]
    at = rng.choice([utc(year, month, 1), utc(year, month, last, 23, 59, 59),
                     utc(year, month, min(rng.randint(29, 31), last), rng.randint(0, 23))])
    return min(max(at, start), end)


def _random_history(conn, rng, user, as_of):
    """Lots over the two years before the as-of, spending, rewards with clawbacks (young and old) and
    recoveries, the balance never below zero; nothing dated after the as-of."""
    events = sorted((_random_instant(rng, as_of - timedelta(days=730), as_of), rng.random())
                    for _ in range(rng.randint(1, 12)))
    balance = 0
    for at, dice in events:
        if dice < 0.45 or balance == 0:
            points = rng.randint(1, 300)
            balance += points
            _row(conn, user, points, "ADMIN_GRANT", at)
        elif dice < 0.65:
            points = rng.randint(1, 300)
            clawed_at = min(at + timedelta(days=rng.randint(0, 400)), as_of)
            clawed = rng.randint(0, min(points, balance + points)) if rng.random() < 0.5 else None
            _reward(conn, user, points, at, clawed=clawed, clawed_at=clawed_at if clawed is not None else None)
            balance += points - (clawed or 0)
        elif dice < 0.85:
            spent = rng.randint(1, balance)
            balance -= spent
            _row(conn, user, -spent, "REDEMPTION_GIFT_CARD", at)
        else:
            recovered = rng.randint(1, balance)
            balance -= recovered
            _recovery(conn, user, recovered, at)


def _run_months(as_of):
    start = (as_of.year, as_of.month)
    return [first_instant(start[0], start[1] + k) for k in range(1, 13)]


@pytest.mark.parametrize("seed", range(6))
def test_random_ledgers_expire_month_by_month_what_the_schedule_said(engine, make_settings, seed):
    rng = random.Random(seed)
    settings = make_settings(points_expiry_months=rng.choice([12, 12, 1, 3]))
    as_of = rng.choice([_random_instant(rng, utc(2026, 1, 1), utc(2026, 12, 31)),
                        first_instant(2026, rng.randint(1, 12))])
    users = [new_id() for _ in range(30)]
    with engine.begin() as conn:
        for user in users:
            _random_history(conn, rng, user, as_of)
    for _ in range(rng.randint(0, 2)):   # earlier EXPIRY rows, debits like any other
        _expire(engine, settings, _random_instant(rng, as_of - timedelta(days=400), as_of - timedelta(hours=1)))
    with engine.connect() as conn:
        schedule = liability_schedule(conn, as_of, settings)
        lots = {user: user_balance(conn, user, as_of, settings)["lots"] for user in users}
    assert _holds(schedule)

    def lots_expiring(user, after, before):
        return sum(lot["remaining"] for lot in lots[user]
                   if (after is None or datetime.fromisoformat(lot["expires_at"]) >= after)
                   and datetime.fromisoformat(lot["expires_at"]) < before)

    _expire(engine, settings, as_of)
    assert _expired_at(engine, as_of) == schedule["due_now_points"]
    for user in users:
        assert _expired_at(engine, as_of, user) == lots_expiring(user, None, as_of), user
    previous = as_of
    for run_at, month in zip(_run_months(as_of), schedule["months"], strict=True):
        _expire(engine, settings, run_at)
        assert _expired_at(engine, run_at) == month["points"], (seed, month)
        for user in users:
            assert _expired_at(engine, run_at, user) == lots_expiring(user, previous, run_at), (user, month)
        previous = run_at
    with engine.connect() as conn:
        left = conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                 " WHERE user_id = ANY(:users)"), {"users": users}).scalar_one()
    assert left == schedule["later_points"]
