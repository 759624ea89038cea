"""Sample data: deterministic by seed, realistic in shape, consistent with the rules the app keeps."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from cli import sample_data
from tests.builders import add_relationship, utc

AS_OF = utc(2026, 6, 1)
USERS = 1500
TABLES = ("user_referral_codes", "user_referral_relationships", "user_subscription_payments",
          "user_point_transactions", "user_point_balances")


def _checksums(engine):
    # updated_at is billing's recording time (NOW() by default), not sample data; a ledger row's id is
    # the database's (the one ledger writer lets it choose), not the sample's
    not_sample = {table: "'updated_at'" for table in TABLES} | {"user_point_transactions": "'updated_at' - 'id'"}
    with engine.connect() as conn:
        return {table: conn.execute(text(
            f"SELECT count(*), md5(string_agg((to_jsonb(t) - {not_sample[table]})::text, '|'"
            f" ORDER BY (to_jsonb(t) - {not_sample[table]})::text)) FROM public.{table} t"
        )).one() for table in TABLES}


def _scalar(engine, sql, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def _rows(engine, sql, **params):
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


@pytest.fixture
def sample(engine):
    counts = sample_data.generate(engine, users=USERS, seed=7, as_of=AS_OF)
    return engine, counts


@pytest.fixture
def second_engine(server_url, template_database):
    """Another fresh database on the same server, to generate the same world twice."""
    import os

    from sqlalchemy.engine import make_url

    from core.db import make_engine

    name = f"rewards_sample_twin_{os.getpid()}"
    admin = make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    engine = make_engine(make_url(server_url).set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_the_same_seed_gives_the_same_rows(sample, second_engine, engine):
    _, counts = sample
    assert sample_data.generate(second_engine, users=USERS, seed=7, as_of=AS_OF) == counts
    assert _checksums(second_engine) == _checksums(engine)


def test_another_seed_gives_other_rows(sample, second_engine, engine):
    sample_data.generate(second_engine, users=USERS, seed=8, as_of=AS_OF)
    theirs, ours = _checksums(second_engine), _checksums(engine)
    assert all(theirs[table] != ours[table] for table in TABLES)


def test_counts_are_returned_per_table_and_have_the_intended_proportions(sample):
    _, counts = sample
    assert counts["referral_codes"] == USERS
    assert 0.90 * USERS <= counts["relationships"] <= 0.97 * USERS  # 2 % roots, 3 % organic
    assert counts["payments"] > 2 * counts["relationships"]
    assert counts["ledger"] > 5 * counts["relationships"]


def test_every_relationship_status_is_present_with_its_timestamps(sample):
    engine, _ = sample
    rows = {row.status: row for row in _rows(engine, """
        SELECT status, count(*) AS n, count(activated_at) AS activated, count(rewarded_at) AS rewarded,
               count(expired_at) AS expired,
               count(*) FILTER (WHERE created_at <= :as_of - interval '90 days') AS old
        FROM public.user_referral_relationships GROUP BY status""", as_of=AS_OF)}
    assert set(rows) == {"PENDING", "ACTIVE", "REWARDED", "EXPIRED"}
    assert 0 < rows["PENDING"].old < rows["PENDING"].n  # young ones, and old ones for expire-pending
    assert rows["REWARDED"].rewarded == rows["REWARDED"].activated == rows["REWARDED"].n
    assert rows["ACTIVE"].activated == rows["ACTIVE"].n and rows["ACTIVE"].rewarded == 0
    assert rows["EXPIRED"].expired == rows["EXPIRED"].n and rows["PENDING"].expired == 0


def test_nothing_happens_after_as_of(sample):
    engine, _ = sample
    latest = _scalar(engine, """
        SELECT max(t) FROM (
            SELECT max(created_at) AS t FROM public.user_referral_relationships
            UNION ALL SELECT max(activated_at) FROM public.user_referral_relationships
            UNION ALL SELECT max(rewarded_at) FROM public.user_referral_relationships
            UNION ALL SELECT max(paid_at) FROM public.user_subscription_payments
            UNION ALL SELECT max(created_at) FROM public.user_point_transactions) AS times""")
    assert latest <= AS_OF


def test_trees_have_chains_cycles_self_referrals_and_a_few_level_2_rows(sample):
    engine, _ = sample
    shape = _rows(engine, """
        SELECT count(*) FILTER (WHERE r.referrer_user_id = r.referred_user_id) AS self_referrals,
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM public.user_referral_relationships b
                   WHERE b.referred_user_id = r.referrer_user_id AND b.referrer_user_id = r.referred_user_id
                     AND b.id <> r.id)) AS in_two_user_cycles,
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM public.user_referral_relationships b
                   WHERE b.referred_user_id = r.referrer_user_id AND b.level = 1)) AS chained,
               count(*) FILTER (WHERE r.level = 2) AS level_2,
               count(*) AS total
        FROM public.user_referral_relationships r""")[0]
    assert shape.self_referrals >= 1
    assert shape.in_two_user_cycles >= 2
    assert shape.level_2 >= 1 and shape.level_2 < 0.01 * shape.total
    assert shape.chained > 0.5 * shape.total


def test_payments_belong_to_rewarded_users_start_at_the_first_payment_and_have_every_status(sample):
    engine, _ = sample
    statuses = dict(_rows(engine, "SELECT status, count(*) FROM public.user_subscription_payments GROUP BY 1"))
    assert set(statuses) == {"PAID", "REFUNDED", "FAILED"}
    assert statuses["PAID"] > 10 * (statuses["REFUNDED"] + statuses["FAILED"])
    assert _scalar(engine, """
        SELECT count(*) FROM public.user_subscription_payments p
        WHERE p.amount_cents NOT IN (999, 1999, 2999, 4999)
           OR NOT EXISTS (SELECT 1 FROM public.user_referral_relationships r
                          WHERE r.referred_user_id = p.user_id AND p.paid_at >= r.rewarded_at)""") == 0
    first_payment_missing = _scalar(engine, """
        SELECT count(*) FROM public.user_referral_relationships r
        WHERE r.status = 'REWARDED' AND NOT EXISTS (
            SELECT 1 FROM public.user_subscription_payments p
            WHERE p.user_id = r.referred_user_id AND p.paid_at = r.rewarded_at AND p.status = 'PAID')""")
    assert first_payment_missing == 0


def test_ledger_has_the_apps_types_without_keys_and_no_balance_ever_goes_negative(sample):
    engine, _ = sample
    types = dict(_rows(engine, "SELECT type, count(*) FROM public.user_point_transactions GROUP BY 1"))
    assert set(types) == {"REFERRAL_FIRST_PAYMENT", "REFERRAL_WELCOME", "ADMIN_GRANT",
                          "REDEMPTION_QUOTA", "REDEMPTION_UNLOCK"}
    assert _scalar(engine, "SELECT count(idempotency_key) FROM public.user_point_transactions") == 0
    assert _scalar(engine, "SELECT count(*) FROM public.user_point_transactions WHERE type = 'ADMIN_GRANT' AND delta < 0") > 0
    negative_moments = _scalar(engine, """
        SELECT count(*) FROM (
            SELECT sum(delta) OVER (PARTITION BY user_id ORDER BY created_at, delta DESC
                                    ROWS UNBOUNDED PRECEDING) AS running
            FROM public.user_point_transactions) AS t
        WHERE running < 0""")
    assert negative_moments == 0


def test_the_cache_equals_the_ledger_but_for_a_little_drift(sample):
    engine, _ = sample
    drift = _rows(engine, """
        WITH ledger AS (
            SELECT user_id, sum(delta) AS balance, sum(greatest(delta, 0)) AS earned, sum(least(delta, 0)) AS spent
            FROM public.user_point_transactions GROUP BY user_id)
        SELECT l.user_id IS NULL AS orphan, c.user_id IS NULL AS missing,
               l.balance IS DISTINCT FROM c.balance AS balance_off,
               l.earned IS DISTINCT FROM c.total_earned AS earned_off,
               c.balance <> c.total_earned + c.total_spent AS inconsistent
        FROM ledger l FULL JOIN public.user_point_balances c USING (user_id)
        WHERE (l.balance, l.earned, l.spent) IS DISTINCT FROM (c.balance, c.total_earned, c.total_spent)""")
    assert len(drift) == 6  # 5 drifted users (one of them missing) and one orphan
    assert sum(row.orphan for row in drift) == 1
    assert sum(row.missing for row in drift) == 1
    assert sum(bool(row.inconsistent) for row in drift) == 2
    assert all(row.balance_off or row.earned_off for row in drift)


def test_generate_refuses_a_database_that_already_holds_data(engine):
    with engine.begin() as conn:
        add_relationship(conn)
    with pytest.raises(sample_data.SampleDataError):
        sample_data.generate(engine, users=10, as_of=AS_OF)


def test_advance_adds_a_weeks_activity_of_the_same_world_and_keeps_the_cache_in_step(sample):
    engine, before = sample
    next_week = AS_OF + timedelta(days=7)
    after = sample_data.advance(engine, users=USERS, seed=7, as_of=AS_OF, until=next_week)

    assert after["referral_codes"] > before["referral_codes"]  # sign-ups go on at about 2N/span a day
    assert after["relationships"] > before["relationships"]
    assert after["payments"] > before["payments"]
    assert after["ledger"] > before["ledger"]
    window = _rows(engine, """
        SELECT (SELECT count(*) FROM public.user_point_transactions WHERE created_at > :since) AS ledger,
               (SELECT count(*) FROM public.user_subscription_payments WHERE paid_at > :since) AS payments,
               (SELECT max(paid_at) FROM public.user_subscription_payments) AS last_payment""", since=AS_OF)[0]
    assert window.ledger == after["ledger"] - before["ledger"]
    assert window.payments == after["payments"] - before["payments"]
    assert window.last_payment <= next_week
    # the day's app rows moved the cache with them: the drift is what generate left, nothing more
    assert _scalar(engine, """
        WITH ledger AS (SELECT user_id, sum(delta) AS balance FROM public.user_point_transactions GROUP BY 1)
        SELECT count(*) FROM ledger l FULL JOIN public.user_point_balances c USING (user_id)
        WHERE l.balance IS DISTINCT FROM c.balance""") == 5  # missing, orphan, 3 with a balance off


def test_advance_refuses_a_window_before_the_worlds_as_of(sample):
    engine, _ = sample
    with pytest.raises(ValueError):
        sample_data.advance(engine, users=USERS, seed=7, as_of=AS_OF, until=AS_OF - timedelta(hours=1))


def test_generate_leaves_every_index_and_constraint_as_the_migrations_made_them(engine):
    schema_sql = """
        SELECT indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
        ORDER BY 1"""
    with engine.connect() as conn:
        before = conn.execute(text(schema_sql)).scalars().all()
    sample_data.generate(engine, users=50, as_of=AS_OF)
    with engine.connect() as conn:
        after = conn.execute(text(schema_sql)).scalars().all()
    assert after == before
    assert any("uq_upt_idempotency_key" in line for line in after)


def test_advance_refuses_redemptions_that_points_expired_meanwhile_would_not_cover(sample, settings):
    from core.runner import run_job
    from jobs import expire_points

    engine, _ = sample
    assert run_job(expire_points.JOB, settings=settings, engine=engine, as_of=AS_OF).status == "SUCCEEDED"

    sample_data.advance(engine, users=USERS, seed=7, as_of=AS_OF, until=AS_OF + timedelta(days=30))

    assert _scalar(engine, "SELECT count(*) FROM public.user_point_transactions WHERE delta < 0"
                   " AND type LIKE 'REDEMPTION%' AND created_at > :as_of", as_of=AS_OF) > 0
    negative_users = _scalar(engine, """
        SELECT count(*) FROM (SELECT user_id FROM public.user_point_transactions
                              GROUP BY user_id HAVING sum(delta) < 0) AS negative""")
    assert negative_users == 0


def test_a_timeline_adds_the_same_rows_week_by_week_as_advance_does(sample, second_engine, engine):
    weeks = [AS_OF + timedelta(days=7 * week) for week in range(1, 4)]
    sample_data.generate(second_engine, users=USERS, seed=7, as_of=AS_OF)
    since = AS_OF
    for week in weeks:
        sample_data.advance(second_engine, users=USERS, seed=7, as_of=AS_OF, since=since, until=week)
        since = week
    with sample_data.timeline(engine, users=USERS, seed=7, as_of=AS_OF, last=weeks[-1]) as timeline:
        for week in weeks:
            timeline.advance(week)
        with pytest.raises(ValueError):
            timeline.advance(weeks[-1] + timedelta(days=1))  # past what it planned
    assert _checksums(engine) == _checksums(second_engine)
    assert _scalar(engine, "SELECT max(created_at) FROM public.user_point_transactions") > weeks[-2]


def test_late_payments_fall_in_unpaid_reward_months_of_the_period_and_are_recorded_late(sample):
    engine, _ = sample
    period_from, period_to = utc(2026, 4, 1), utc(2026, 5, 1)
    late = sample_data.late_payments(engine, seed=7, period_from=period_from, period_to=period_to,
                                     recorded_at=AS_OF, count=3)
    assert len(late) == 3 and len({payment.referred_user_id for payment in late}) == 3
    for payment in late:
        assert period_from <= payment.paid_at < period_to
        relationship = _rows(engine, """
            SELECT referrer_user_id::text AS referrer, rewarded_at, level, status
            FROM public.user_referral_relationships WHERE referred_user_id = :user""",
                             user=payment.referred_user_id)[0]
        assert (relationship.referrer, relationship.level, relationship.status) == (
            payment.referrer_user_id, 1, "REWARDED")
        # the only PAID payment of its reward month: the month was unpaid before it arrived
        in_month = _scalar(engine, """
            SELECT count(*) FROM public.user_subscription_payments p,
                 LATERAL (SELECT k FROM generate_series(1, 12) AS k
                          WHERE :paid_at >= CAST(:rewarded_at AS timestamptz) + k * interval '1 month'
                            AND :paid_at < CAST(:rewarded_at AS timestamptz) + (k + 1) * interval '1 month') AS m
            WHERE p.user_id = :user AND p.status = 'PAID'
              AND p.paid_at >= CAST(:rewarded_at AS timestamptz) + m.k * interval '1 month'
              AND p.paid_at < CAST(:rewarded_at AS timestamptz) + (m.k + 1) * interval '1 month'""",
                           paid_at=payment.paid_at, rewarded_at=relationship.rewarded_at, user=payment.referred_user_id)
        assert in_month == 1
    assert _scalar(engine, "SELECT count(*) FROM public.user_subscription_payments WHERE created_at = :at",
                   at=AS_OF) == 3
    again = sample_data.late_payments(engine, seed=7, period_from=period_from, period_to=period_to,
                                      recorded_at=AS_OF, count=3)
    # months paid now are not chosen again (another month of the same user may be)
    assert len({(payment.referred_user_id, payment.paid_at) for payment in [*late, *again]}) == len(late) + len(again)


def test_a_timeline_with_refunds_refunds_a_few_paid_payments_days_after_they_were_paid(sample, engine):
    weeks = [AS_OF + timedelta(days=7 * week) for week in range(1, 5)]
    paid_before = _scalar(engine, "SELECT count(*) FROM public.user_subscription_payments WHERE status = 'PAID'")
    started = _scalar(engine, "SELECT clock_timestamp()")  # the feed's trigger stamps an update's updated_at
    with sample_data.timeline(engine, users=USERS, seed=7, as_of=AS_OF, last=weeks[-1], refunds=True) as timeline:
        refunded = []
        for week in weeks:
            timeline.advance(week)
            refunded.append(_scalar(engine, "SELECT count(*) FROM public.user_subscription_payments"
                                            " WHERE status = 'REFUNDED' AND updated_at > :at", at=started))
    assert 0 < refunded[-1] < 0.05 * paid_before  # about 2 % of a month of payments, never most of them
    assert refunded == sorted(refunded)
    # a refund comes 3 to 20 days after the payment, and only once it is due
    late = _rows(engine, """SELECT paid_at FROM public.user_subscription_payments
                            WHERE status = 'REFUNDED' AND updated_at > :at""", at=started)
    assert all(row.paid_at <= weeks[-1] - timedelta(days=3) for row in late)
    assert all(row.paid_at >= AS_OF - timedelta(days=20) for row in late)


def test_a_timeline_with_drift_puts_a_credit_twice_in_a_cache_row_about_every_other_week(sample, engine):
    def drifted_users():
        return _scalar(engine, """
            WITH ledger AS (SELECT user_id, sum(delta) AS balance FROM public.user_point_transactions GROUP BY 1)
            SELECT count(*) FROM ledger l FULL JOIN public.user_point_balances c USING (user_id)
            WHERE l.balance IS DISTINCT FROM c.balance""")

    weeks = [AS_OF + timedelta(days=7 * week) for week in range(1, 13)]
    before = drifted_users()  # what generate left: missing, orphan, 3 with a balance off
    with sample_data.timeline(engine, users=USERS, seed=7, as_of=AS_OF, last=weeks[-1], drift=True) as timeline:
        counts = []
        for week in weeks:
            timeline.advance(week)
            counts.append(drifted_users())
    added = counts[-1] - before
    assert 2 <= added <= 10 and counts == sorted(counts)  # about every other week, a user at a time
    consistent = _scalar(engine, """
        SELECT count(*) FROM public.user_point_balances WHERE balance <> total_earned + total_spent""")
    assert consistent == 2  # generate's two inconsistent rows; the weekly drift keeps the cache consistent
