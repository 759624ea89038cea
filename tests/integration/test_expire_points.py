"""expire-points: FIFO expiry of points earned more than N months before the as-of instant."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import text

from core.runner import run_job
from core.sql import uuid_array
from jobs import expire_points
from tests.builders import add_analyzed_ledger, add_app_points, balance_of, ledger_rows, new_id, utc

AS_OF = utc(2026, 6, 1)
CUTOFF = utc(2025, 6, 1)  # AS_OF - 12 months
OLD = utc(2025, 1, 10)
FRESH = utc(2026, 1, 1)


def _expire(engine, settings, as_of=AS_OF, **options):
    result = run_job(expire_points.JOB, settings=settings, engine=engine, as_of=as_of, **options)
    assert result.status == "SUCCEEDED", result.error
    return result


def _expiry_deltas(engine, user):
    with engine.connect() as conn:
        return [row.delta for row in ledger_rows(conn, user_id=user, type="EXPIRY")]


def _ledger_balance(engine, user):
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                 " WHERE user_id = :user"), {"user": user}).scalar_one()


def test_points_earned_exactly_at_the_cutoff_stay_and_a_second_earlier_expire(engine, settings):
    at_cutoff, just_before = new_id(), new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=at_cutoff, delta=100, type="REFERRAL_WELCOME", created_at=CUTOFF)
        add_app_points(conn, user=just_before, delta=100, type="REFERRAL_WELCOME",
                       created_at=CUTOFF - timedelta(seconds=1))

    result = _expire(engine, settings)

    assert _expiry_deltas(engine, at_cutoff) == []
    assert _expiry_deltas(engine, just_before) == [-100]
    assert result.stats["points_written"] == {"EXPIRY": -100}
    assert result.stats["users_expired"] == 1


def test_the_expiry_row_has_no_ref_a_keyed_as_of_and_moves_the_cache(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=80, type="REFERRAL_FIRST_PAYMENT", created_at=OLD)

    _expire(engine, settings)

    with engine.connect() as conn:
        (row,) = ledger_rows(conn, user_id=user, type="EXPIRY")
        assert (row.delta, row.ref_id, row.created_at) == (-80, None, AS_OF)
        assert row.idempotency_key == f"expiry:{user}:2026-06-01T00:00:00+00:00"
        assert tuple(balance_of(conn, user)) == (0, 80, -80)


def test_debits_consume_the_oldest_points_first(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_FIRST_PAYMENT", created_at=OLD)
        add_app_points(conn, user=user, delta=50, type="REFERRAL_RECURRING", created_at=FRESH)
        add_app_points(conn, user=user, delta=-30, type="REDEMPTION_QUOTA", created_at=utc(2026, 2, 1))

    _expire(engine, settings)

    assert _expiry_deltas(engine, user) == [-70]
    with engine.connect() as conn:
        assert tuple(balance_of(conn, user)) == (50, 150, -100)


def test_admin_grants_count_as_earned_and_admin_deductions_as_debits(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=40, type="ADMIN_GRANT", created_at=OLD)
        add_app_points(conn, user=user, delta=10, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=user, delta=-25, type="ADMIN_GRANT", created_at=FRESH)
        add_app_points(conn, user=user, delta=5, type="ADMIN_GRANT", created_at=FRESH)

    _expire(engine, settings)

    assert _expiry_deltas(engine, user) == [-(40 + 10 - 25)]
    assert _ledger_balance(engine, user) == 5


def test_users_with_nothing_left_to_expire_get_no_row(engine, settings):
    spent_all, negative = new_id(), new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=spent_all, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=spent_all, delta=-100, type="REDEMPTION_UNLOCK", created_at=utc(2025, 2, 1))
        add_app_points(conn, user=negative, delta=20, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=negative, delta=-50, type="ADMIN_GRANT", created_at=utc(2025, 2, 1))

    result = _expire(engine, settings)

    assert _expiry_deltas(engine, spent_all) == []
    assert _expiry_deltas(engine, negative) == []
    assert result.stats["users_checked"] == 2
    assert result.stats["users_expired"] == 0
    assert "rows_written" not in result.stats


def test_a_rerun_for_the_same_as_of_writes_nothing(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
    _expire(engine, settings)

    again = _expire(engine, settings)

    assert _expiry_deltas(engine, user) == [-100]
    assert again.stats["users_expired"] == 0
    assert "rows_written" not in again.stats


def test_a_later_as_of_expires_the_points_that_crossed_since_and_counts_earlier_expiry(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=user, delta=60, type="REFERRAL_RECURRING", created_at=utc(2025, 7, 15))
        add_app_points(conn, user=user, delta=-20, type="REDEMPTION_QUOTA", created_at=utc(2026, 3, 1))
        add_app_points(conn, user=user, delta=30, type="REFERRAL_RECURRING", created_at=utc(2026, 1, 1))
    _expire(engine, settings)  # cutoff 2025-06-01: due = 100 - 20 redeemed = 80

    later = _expire(engine, settings, as_of=utc(2026, 8, 1))  # cutoff 2025-08-01: the 60 crossed

    # due = (100 + 60) - (20 redeemed + 80 expired earlier) = 60
    assert _expiry_deltas(engine, user) == [-80, -60]
    assert _ledger_balance(engine, user) == 30


def test_a_redemption_dated_after_as_of_is_counted_so_no_balance_goes_negative(engine, settings):
    """The app redeemed between the scheduled as-of instant and the run: FIFO spent the oldest points."""
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=user, delta=20, type="REFERRAL_RECURRING", created_at=FRESH)
        add_app_points(conn, user=user, delta=-100, type="REDEMPTION_QUOTA", created_at=AS_OF + timedelta(seconds=2))

    _expire(engine, settings)

    assert _expiry_deltas(engine, user) == []
    assert _ledger_balance(engine, user) == 20


def test_a_back_dated_run_after_a_later_run_expires_nothing_twice(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=user, delta=50, type="REFERRAL_RECURRING", created_at=utc(2026, 2, 1))
    _expire(engine, settings, as_of=utc(2026, 3, 1))

    back_dated = _expire(engine, settings, as_of=utc(2026, 2, 1))

    assert _expiry_deltas(engine, user) == [-100]
    assert back_dated.stats["users_expired"] == 0
    assert _ledger_balance(engine, user) == 50


def test_months_are_postgresql_calendar_months_clamped_to_the_month_end(engine, make_settings):
    """Mar 31 - 1 month = Feb 28 (2026 is not a leap year)."""
    at_cutoff, just_before = new_id(), new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=at_cutoff, delta=10, type="REFERRAL_WELCOME", created_at=utc(2026, 2, 28))
        add_app_points(conn, user=just_before, delta=10, type="REFERRAL_WELCOME",
                       created_at=utc(2026, 2, 27, 23, 59, 59))

    result = _expire(engine, make_settings(points_expiry_months=1), as_of=utc(2026, 3, 31))

    assert result.stats["cutoff"] == utc(2026, 2, 28).isoformat()
    assert _expiry_deltas(engine, at_cutoff) == []
    assert _expiry_deltas(engine, just_before) == [-10]


def test_zero_months_turns_expiry_off(engine, make_settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=utc(2020, 1, 1))

    result = _expire(engine, make_settings(points_expiry_months=0))

    assert result.stats == {"disabled": True}
    assert _expiry_deltas(engine, user) == []


def test_a_dry_run_reports_the_expiry_and_writes_nothing(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)

    dry = _expire(engine, settings, dry_run=True)

    assert dry.stats["points_written"] == {"EXPIRY": -100}
    assert dry.stats["users_expired"] == 1
    assert _expiry_deltas(engine, user) == []
    real = _expire(engine, settings)
    assert _expiry_deltas(engine, user) == [-100]


def test_every_run_checks_every_user_with_points_before_cutoff_and_expires_only_what_is_due(engine, settings):
    crossed_long_ago, crosses_on_day_one, crosses_on_day_two, still_fresh = (new_id() for _ in range(4))
    with engine.begin() as conn:
        add_app_points(conn, user=crossed_long_ago, delta=10, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=crosses_on_day_one, delta=10, type="REFERRAL_WELCOME",
                       created_at=utc(2025, 5, 31, 12))
        add_app_points(conn, user=crosses_on_day_two, delta=10, type="REFERRAL_WELCOME",
                       created_at=utc(2025, 6, 1, 12))
        add_app_points(conn, user=still_fresh, delta=10, type="REFERRAL_WELCOME", created_at=FRESH)
    first = _expire(engine, settings, as_of=utc(2026, 5, 31))

    day_one = _expire(engine, settings, as_of=utc(2026, 6, 1))
    day_two = _expire(engine, settings, as_of=utc(2026, 6, 2))

    assert [run.stats["users_checked"] for run in (first, day_one, day_two)] == [1, 2, 3]
    assert [run.stats["users_expired"] for run in (first, day_one, day_two)] == [1, 1, 1]
    assert [_expiry_deltas(engine, user) for user in (crossed_long_ago, crosses_on_day_one, crosses_on_day_two,
                                                      still_fresh)] == [[-10], [-10], [-10], []]


def test_points_back_filled_before_an_earlier_cutoff_expire_in_the_next_run(engine, settings):
    regular, back_filled = new_id(), new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=regular, delta=10, type="REFERRAL_WELCOME", created_at=OLD)
    _expire(engine, settings, as_of=utc(2026, 5, 31))
    with engine.begin() as conn:
        add_app_points(conn, user=back_filled, delta=25, type="ADMIN_GRANT", created_at=utc(2024, 3, 1))

    _expire(engine, settings, as_of=utc(2026, 6, 2))

    assert _expiry_deltas(engine, back_filled) == [-25]
    assert _expiry_deltas(engine, regular) == [-10]


def test_a_rerun_of_the_same_as_of_after_a_back_fill_writes_the_rest_under_a_numbered_key(engine, settings):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=10, type="REFERRAL_WELCOME", created_at=OLD)
    _expire(engine, settings)
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=25, type="ADMIN_GRANT", created_at=utc(2024, 3, 1))
    _expire(engine, settings)
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=5, type="ADMIN_GRANT", created_at=utc(2024, 3, 2))

    third = _expire(engine, settings)
    again = _expire(engine, settings)

    key = f"expiry:{user}:{AS_OF.isoformat()}"
    with engine.connect() as conn:
        rows = ledger_rows(conn, user_id=user, type="EXPIRY")
    assert [(row.idempotency_key, row.delta) for row in rows] == [(key, -10), (key + ":2", -25), (key + ":3", -5)]
    assert third.stats["points_written"] == {"EXPIRY": -5}
    assert "rows_written" not in again.stats
    with engine.connect() as conn:
        assert tuple(balance_of(conn, user)) == (0, 40, -40)


def test_small_batches_expire_every_users_points_once(engine, make_settings):
    users = [new_id() for _ in range(5)]
    with engine.begin() as conn:
        for user in users:
            add_app_points(conn, user=user, delta=7, type="REFERRAL_WELCOME", created_at=OLD)

    result = _expire(engine, make_settings(batch_size=2))

    assert result.stats["points_written"] == {"EXPIRY": -35}
    assert all(_expiry_deltas(engine, user) == [-7] for user in users)


def test_a_batch_reads_only_its_users_ledger_rows_by_index(engine, settings):
    """The one pass over the ledger happens before any lock; under the lock, a batch reads its own
    users' rows only: never by date, where the rows the run (and the jobs before it) wrote pile up at
    as_of after the statistics were taken (here 20,000 of them)."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
            " SELECT gen_random_uuid(), 10, 'REFERRAL_WELCOME', timestamptz '2024-01-01' + n * interval '1 hour'"
            " FROM generate_series(1, 20000) AS n"))
        conn.execute(text("ANALYZE public.user_point_transactions"))
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
            " SELECT gen_random_uuid(), -1, 'EXPIRY', :as_of FROM generate_series(1, 20000)"), {"as_of": AS_OF})
        users = sorted(str(user) for user in conn.execute(text(
            "SELECT user_id FROM public.user_point_transactions ORDER BY created_at LIMIT 3")).scalars())
        # A query-plan test reads the job's private statement: a plan belongs to the statement's text, not to a run.
        plan = "\n".join(conn.execute(text("EXPLAIN " + expire_points._queries.raw("expiry_candidates")), {
            "cutoff": CUTOFF, "as_of": AS_OF, "as_of_key": "k", "cutoff_key": "c",
            "user_ids": uuid_array(users), "first_user_id": users[0], "last_user_id": users[-1],
            "debited_at_as_of": uuid_array(users[:1])}).scalars())

    assert "Seq Scan on user_point_transactions" not in plan
    assert "idx_upt_created" not in plan


def test_the_plan_pass_over_the_whole_ledger_may_run_with_parallel_workers(engine, settings):
    """The plan reads every user's ledger once, like the bound; PostgreSQL plans no parallel workers
    for a statement that writes (an INSERT, also one inside a CTE), but does for CREATE TABLE AS."""
    with engine.begin() as conn:
        add_analyzed_ledger(conn, rows=5000, first_at=OLD)
        for cheap_parallelism in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                                  "min_parallel_table_scan_size = 0", "min_parallel_index_scan_size = 0",
                                  "max_parallel_workers_per_gather = 2"):
            conn.execute(text(f"SET LOCAL {cheap_parallelism}"))
        # A query-plan test reads the job's private statement: a plan belongs to the statement's text, not to a run.
        plan = "\n".join(conn.execute(text("EXPLAIN " + expire_points._queries.raw("plan_run")), {
            "cutoff": CUTOFF, "as_of": AS_OF, "batch_size": 1000}).scalars())

    assert "Gather" in plan, plan


# ── race with the app ────────────────────────────────────────────────────────

def _wait_for_a_lock_wait(engine, timeout=10.0):
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar_one()
            if waiting:
                return
            conn.rollback()
            time.sleep(0.02)
    raise AssertionError("expire-points never waited for the balance row lock")


@pytest.mark.slow
@pytest.mark.parametrize("redeemed_at", [AS_OF - timedelta(hours=1), AS_OF + timedelta(seconds=1)],
                         ids=["dated-before-as-of", "dated-after-as-of"])
def test_a_redemption_committed_while_the_job_waits_for_the_lock_is_not_expired_again(
        engine, settings, redeemed_at):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=100, type="REFERRAL_WELCOME", created_at=OLD)
        add_app_points(conn, user=user, delta=30, type="REFERRAL_RECURRING", created_at=FRESH)
    outcome = {}
    with engine.connect() as app:
        add_app_points(app, user=user, delta=-100, type="REDEMPTION_QUOTA", created_at=redeemed_at)
        job = threading.Thread(target=lambda: outcome.update(result=_expire(engine, settings)))
        job.start()
        _wait_for_a_lock_wait(engine)
        app.commit()
    job.join(timeout=30)

    assert outcome["result"].stats["users_checked"] == 1
    assert _expiry_deltas(engine, user) == []
    assert _ledger_balance(engine, user) == 30
    with engine.connect() as conn:
        assert tuple(balance_of(conn, user)) == (30, 130, -100)


# ── property: the job against a reference of the rule ────────────────────────

_TYPES = ("REFERRAL_WELCOME", "REFERRAL_RECURRING", "ADMIN_GRANT", "REDEMPTION_QUOTA")
_row = st.tuples(st.integers(-60, 120).filter(bool), st.sampled_from(_TYPES), st.integers(-900, 5))
_ledger = st.lists(st.lists(_row, max_size=6), min_size=1, max_size=4)


def _reference_due(rows: list[tuple[int, datetime]], cutoff: datetime) -> int:
    """SPEC.md's rule: points earned before the cutoff less every debit (earlier EXPIRY included)."""
    earned_before = sum(delta for delta, created_at in rows if delta > 0 and created_at < cutoff)
    debits = sum(-delta for delta, _ in rows if delta < 0)
    return max(earned_before - debits, 0)


@pytest.mark.slow
@hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ledger=_ledger, days_between_runs=st.integers(0, 120))
def test_two_successive_runs_expire_what_the_reference_rule_says(engine, settings, ledger, days_between_runs):
    second_as_of = AS_OF + timedelta(days=days_between_runs)
    users = [new_id() for _ in ledger]
    rows = {user: [(delta, AS_OF + timedelta(days=day)) for delta, _, day in user_rows]
            for user, user_rows in zip(users, ledger)}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.job_runs"))  # each example starts as if first
        for user, user_rows in zip(users, ledger):
            for delta, kind, day in user_rows:
                add_app_points(conn, user=user, delta=delta, type=kind, created_at=AS_OF + timedelta(days=day))

    _expire(engine, settings)
    _expire(engine, settings, as_of=second_as_of)

    for user in users:
        first = _reference_due(rows[user], CUTOFF)
        after_first = rows[user] + ([(-first, AS_OF)] if first else [])
        second = _reference_due(after_first, second_as_of.replace(year=second_as_of.year - 1))
        expected = [-due for due in (first, second) if due]
        assert sorted(_expiry_deltas(engine, user)) == sorted(expected)
        if sum(delta for delta, _ in rows[user]) >= 0:
            assert _ledger_balance(engine, user) >= 0
