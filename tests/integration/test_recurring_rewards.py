"""recurring-rewards: the referrer earns a share of each paid month 1..N of a level-1 relationship."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from core.runner import RunResult, run_job
from jobs import recurring_rewards
from tests.builders import add_relationship, balance_of, ledger_rows, new_id, utc

JOB = recurring_rewards.JOB


def run(engine, settings, as_of: datetime, **kwargs) -> RunResult:
    result = run_job(JOB, settings=settings, engine=engine, as_of=as_of, **kwargs)
    assert result.status == "SUCCEEDED", result.error
    return result


def rewarded(engine, *, rewarded_at: datetime, referrer: uuid.UUID | None = None,
             referred: uuid.UUID | None = None, **kwargs) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A REWARDED level-1 relationship: (relationship id, referrer, referred)."""
    referrer, referred = referrer or new_id(), referred or new_id()
    with engine.begin() as conn:
        relationship = add_relationship(conn, referrer=referrer, referred=referred, status="REWARDED",
                                        rewarded_at=rewarded_at, **kwargs)
    return relationship, referrer, referred


def pay(engine, user: uuid.UUID, paid_at: datetime, cents: int = 2000, status: str = "PAID",
        payment_id: uuid.UUID | None = None) -> uuid.UUID:
    payment_id = payment_id or new_id()
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
            " VALUES (:id, :user, :cents, :status, :paid_at)"
        ), {"id": payment_id, "user": user, "cents": cents, "status": status, "paid_at": paid_at})
    return payment_id


def months_paid(engine, relationship: uuid.UUID) -> dict[int, int]:
    """{month k: points} of the recurring rows of one relationship."""
    with engine.connect() as conn:
        rows = ledger_rows(conn, ref_id=relationship, type="REFERRAL_RECURRING")
    return {int(row.idempotency_key.rsplit(":", 1)[1]): row.delta for row in rows}


def all_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in ledger_rows(conn)]


# ── months and basis payments ───────────────────────────────────────────────

def test_twenty_dollars_a_month_gives_200_points_for_months_1_to_12_only(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 10, 9))
    for month in range(14):  # months 0 .. 13, each paid on the 10th at 09:00
        pay(engine, referred, utc(2026 + (month // 12), month % 12 + 1, 10, 9))

    result = run(engine, settings, utc(2027, 3, 1))

    assert months_paid(engine, relationship) == {k: 200 for k in range(1, 13)}
    with engine.connect() as conn:
        assert tuple(balance_of(conn, referrer)) == (2400, 2400, 0)
        rows = ledger_rows(conn, ref_id=relationship)
    assert {row.user_id for row in rows} == {referrer}
    assert {row.created_at for row in rows} == {utc(2027, 3, 1)}
    assert result.stats["rows_written"] == {"REFERRAL_RECURRING": 12}
    assert result.stats["points_written"] == {"REFERRAL_RECURRING": 2400}


def test_row_carries_key_ref_id_and_a_note_naming_month_and_basis_payment(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 10))
    payment = pay(engine, referred, utc(2026, 3, 12))

    run(engine, settings, utc(2026, 6, 1))

    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT user_id, ref_id, idempotency_key, note, type FROM public.user_point_transactions"
        )).one()
    assert (row.user_id, row.ref_id, row.type) == (referrer, relationship, "REFERRAL_RECURRING")
    assert row.idempotency_key == f"recurring:{relationship}:2"
    assert row.note == f"recurring month 2, basis payment {payment}"


def test_month_after_jan_31_ends_on_feb_29_in_a_leap_year(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2024, 1, 31, 12))
    pay(engine, referred, utc(2024, 2, 29, 11, 59, 59), cents=1000)  # month 0
    pay(engine, referred, utc(2024, 2, 29, 12), cents=2000)          # month 1 starts Feb 29 12:00
    pay(engine, referred, utc(2024, 3, 31, 11, 59, 59), cents=5000)  # still month 1, not its basis
    pay(engine, referred, utc(2024, 3, 31, 12), cents=3000)          # month 2 starts Mar 31 12:00

    run(engine, settings, utc(2024, 6, 1))

    assert months_paid(engine, relationship) == {1: 200, 2: 300}


def test_month_after_jan_31_ends_on_feb_28_in_a_common_year(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 31))
    pay(engine, referred, utc(2025, 2, 27, 23, 59, 59), cents=1000)  # month 0
    pay(engine, referred, utc(2025, 2, 28), cents=2000)              # month 1 = [Feb 28, Mar 31)
    pay(engine, referred, utc(2025, 4, 30), cents=4000)              # month 3 = [Apr 30, May 31)

    run(engine, settings, utc(2025, 6, 1))

    assert months_paid(engine, relationship) == {1: 200, 3: 400}


def test_payment_one_second_before_a_month_start_belongs_to_the_month_before(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 3, 15, 8, 30))
    pay(engine, referred, utc(2026, 5, 15, 8, 29, 59), cents=1000)  # last second of month 1
    pay(engine, referred, utc(2026, 5, 15, 8, 30), cents=3000)      # first instant of month 2

    run(engine, settings, utc(2026, 7, 1))

    assert months_paid(engine, relationship) == {1: 100, 2: 300}


def test_basis_is_the_earliest_payment_of_the_month_then_the_smallest_id(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 20), cents=9000)
    tie_at = utc(2026, 2, 5)
    pay(engine, referred, tie_at, cents=5000, payment_id=uuid.UUID(int=2))
    first = pay(engine, referred, tie_at, cents=3000, payment_id=uuid.UUID(int=1))

    run(engine, settings, utc(2026, 6, 1))

    assert months_paid(engine, relationship) == {1: 300}
    with engine.connect() as conn:
        note = conn.execute(text("SELECT note FROM public.user_point_transactions")).scalar_one()
    assert note.endswith(str(first))


def test_refunded_and_failed_payments_do_not_count(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=2000, status="REFUNDED")  # month 1: nothing paid
    pay(engine, referred, utc(2026, 3, 2), cents=9000, status="FAILED")    # month 2: basis is the
    pay(engine, referred, utc(2026, 3, 9), cents=2000)                     # later PAID one
    pay(engine, referred, utc(2026, 4, 2), cents=9000, status="REFUNDED")  # month 3 likewise
    pay(engine, referred, utc(2026, 4, 9), cents=1000)

    run(engine, settings, utc(2026, 6, 1))

    assert months_paid(engine, relationship) == {2: 200, 3: 100}


def test_payment_after_the_as_of_instant_is_not_seen_until_a_run_at_or_after_it(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 3, 20, 12))

    run(engine, settings, utc(2026, 3, 20, 11, 59, 59))
    assert months_paid(engine, relationship) == {}

    run(engine, settings, utc(2026, 3, 20, 12))
    assert months_paid(engine, relationship) == {2: 200}


def test_recurring_months_setting_caps_the_months(engine, make_settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    for month in range(1, 7):
        pay(engine, referred, utc(2026, month, 15))

    run(engine, make_settings(recurring_months=3), utc(2026, 8, 1))

    assert months_paid(engine, relationship) == {1: 200, 2: 200, 3: 200}


def test_zero_recurring_months_writes_nothing(engine, make_settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 15))

    result = run(engine, make_settings(recurring_months=0), utc(2026, 8, 1))

    assert months_paid(engine, relationship) == {}
    assert "rows_written" not in result.stats


# ── amounts ─────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("reward", "points_per_usd", "cents", "expected"), [
    ("10%", "100", 2000, 200),     # the default: $20.00 gives 200
    ("2.5%", "100", 2000, 50),
    ("150", "100", 2000, 150),     # whole points, whatever the payment
    ("150", "100", 0, 150),
    ("10%", "100", 1999, 199),     # 199.9 rounds down
    ("29%", "100", 100, 29),       # exact decimals: 0.29 * 100 in binary floating point is 28.999…
    ("10%", "1.5", 2000, 3),
    ("100%", "100", 2000, 2000),
    ("0.01%", "100", 99_999_999, 9999),
])
def test_reward_amount(engine, make_settings, reward, points_per_usd, cents, expected):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=cents)

    run(engine, make_settings(recurring_reward=reward, points_per_usd=Decimal(points_per_usd)), utc(2026, 6, 1))

    assert months_paid(engine, relationship) == {1: expected}


@pytest.mark.parametrize(("reward", "cents"), [("0", 2000), ("0%", 2000), ("10%", 9), ("10%", 0)])
def test_reward_of_zero_points_is_not_written(engine, make_settings, reward, cents):
    _, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=cents)

    result = run(engine, make_settings(recurring_reward=reward), utc(2026, 6, 1))

    assert all_rows(engine) == []
    with engine.connect() as conn:
        assert balance_of(conn, referrer) is None
    assert "rows_written" not in result.stats


def test_payment_whose_reward_does_not_fit_the_ledger_is_not_written_and_fails_nothing(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=3_000_000_000_000)  # 10% = 300 000 000 000 points
    pay(engine, referred, utc(2026, 3, 2), cents=2000)

    run(engine, settings, utc(2026, 6, 1))

    assert months_paid(engine, relationship) == {2: 200}


# ── which relationships earn ────────────────────────────────────────────────

@pytest.mark.parametrize(("level", "status"), [(1, "PENDING"), (1, "ACTIVE"), (1, "EXPIRED"), (2, "REWARDED")])
def test_only_level_1_rewarded_relationships_earn(engine, settings, level, status):
    referred = new_id()
    with engine.begin() as conn:
        add_relationship(conn, referred=referred, level=level, status=status, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2))

    run(engine, settings, utc(2026, 6, 1))

    assert all_rows(engine) == []


def test_self_referral_is_skipped_and_counted(engine, settings):
    user = new_id()
    rewarded(engine, rewarded_at=utc(2026, 1, 1), referrer=user, referred=user)
    pay(engine, user, utc(2026, 2, 2))

    result = run(engine, settings, utc(2026, 6, 1))

    assert all_rows(engine) == []
    assert result.stats["relationships_scanned"] == 1


def test_rewarded_relationship_without_rewarded_at_is_skipped_and_counted(engine, settings):
    bad_referred = new_id()
    with engine.begin() as conn:
        add_relationship(conn, referred=bad_referred, status="REWARDED", rewarded_at=None)
    pay(engine, bad_referred, utc(2026, 2, 2))
    good, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2))

    result = run(engine, settings, utc(2026, 6, 1))

    assert result.stats["skipped_missing_rewarded_at"] == 1
    assert [row.ref_id for row in (ledger_rows_of(engine))] == [good]


def ledger_rows_of(engine):
    with engine.connect() as conn:
        return ledger_rows(conn)


def test_payments_table_may_be_a_view(engine, make_settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    pay(engine, referred, utc(2026, 2, 2), cents=9000)  # hidden by the view
    pay(engine, referred, utc(2026, 2, 9), cents=2000)
    with engine.begin() as conn:
        conn.execute(text(
            "CREATE VIEW public.billing_payments AS"
            " SELECT id, user_id, amount_cents, status, paid_at, created_at"
            " FROM public.user_subscription_payments WHERE amount_cents < 5000"
        ))

    run(engine, make_settings(payments_table="public.billing_payments"), utc(2026, 6, 1))

    assert months_paid(engine, relationship) == {1: 200}


# ── reruns, as-of order, the restricted scan ────────────────────────────────

def test_rerun_changes_nothing(engine, settings):
    _, referrer, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
    for month in (2, 3, 4):
        pay(engine, referred, utc(2026, month, 3))
    run(engine, settings, utc(2026, 6, 1))
    before = all_rows(engine)

    again = run(engine, settings, utc(2026, 6, 1))

    assert all_rows(engine) == before
    assert len(before) == 3
    assert "rows_written" not in again.stats
    with engine.connect() as conn:
        assert tuple(balance_of(conn, referrer)) == (600, 600, 0)


def test_runs_at_several_as_of_dates_in_any_order_equal_one_run_at_the_latest(engine, settings):
    relationship, referrer, referred = rewarded(engine, rewarded_at=utc(2025, 1, 1))
    for month in range(1, 13):
        pay(engine, referred, utc(2025, month, 5), cents=1000 * month)
    pay(engine, referred, utc(2026, 1, 5), cents=13000)

    for as_of in (utc(2025, 6, 1), utc(2025, 3, 1), utc(2026, 3, 1), utc(2025, 9, 1), utc(2025, 2, 1)):
        run(engine, settings, as_of)

    assert months_paid(engine, relationship) == {k: 100 * (k + 1) for k in range(1, 13)}
    with engine.connect() as conn:
        assert balance_of(conn, referrer).balance == sum(100 * (k + 1) for k in range(1, 13))


def test_payment_recorded_late_is_rewarded_by_the_next_run(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 1))  # month 12 ends 2026-02-01
    run(engine, settings, utc(2026, 2, 2))
    pay(engine, referred, utc(2026, 1, 20))  # month 12, recorded by billing after that run

    run(engine, settings, utc(2026, 2, 5))

    assert months_paid(engine, relationship) == {12: 200}


def test_raising_the_months_setting_backfills_months_that_ended_before_the_last_run(engine, make_settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2024, 1, 1))
    for month in range(2, 14):
        pay(engine, referred, utc(2024 + (month - 1) // 12, (month - 1) % 12 + 1, 3))  # months 1..12
    run(engine, make_settings(recurring_months=3), utc(2026, 1, 1))

    raised = run(engine, make_settings(recurring_months=12), utc(2026, 1, 2))

    assert months_paid(engine, relationship) == {k: 200 for k in range(1, 13)}


def test_another_payments_table_is_read_whole(engine, make_settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2024, 1, 1))
    run(engine, make_settings(), utc(2026, 1, 1))
    pay(engine, referred, utc(2024, 3, 3))  # found later, e.g. in a corrected billing view
    with engine.begin() as conn:
        conn.execute(text("CREATE VIEW public.corrected_payments AS SELECT * FROM public.user_subscription_payments"))

    corrected = run(engine, make_settings(payments_table="public.corrected_payments"), utc(2026, 1, 2))

    assert months_paid(engine, relationship) == {2: 200}


def test_run_for_an_earlier_as_of_than_the_last_success_writes_nothing_new(engine, settings):
    relationship, _, referred = rewarded(engine, rewarded_at=utc(2024, 1, 1))
    pay(engine, referred, utc(2024, 3, 3))
    run(engine, settings, utc(2026, 1, 1))

    earlier = run(engine, settings, utc(2024, 6, 1))

    assert months_paid(engine, relationship) == {2: 200}
    assert "rows_written" not in earlier.stats


def test_small_batches_reward_every_relationship_once(engine, make_settings):
    relationships = []
    for day in (1, 1, 1, 2, 3):  # equal rewarded_at values among them
        relationship, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, day))
        pay(engine, referred, utc(2026, 2, 10))
        relationships.append(relationship)

    result = run(engine, make_settings(batch_size=2), utc(2026, 6, 1))

    assert result.stats["relationships_scanned"] == 5
    assert sorted(row.ref_id for row in ledger_rows_of(engine)) == sorted(relationships)  # each once



@pytest.mark.parametrize(("batch_size", "batches"), [(3, 3), (4, 2), (9, 1)])
def test_a_batch_is_about_batch_size_rows_each_referred_users_rows_together(engine, make_settings, batch_size,
                                                                            batches):
    """Three referred users owe three months each: batches are counted in rows (a batch starts at the
    user whose first row passes a multiple of the size), never splitting a user's months."""
    for _ in range(3):
        _, _, referred = rewarded(engine, rewarded_at=utc(2026, 1, 1))
        for month in (1, 2, 3):
            pay(engine, referred, utc(2026, 1 + month, 10))

    result = run(engine, make_settings(batch_size=batch_size), utc(2026, 6, 1))

    assert (result.stats["batches"], result.stats["items"]) == (batches, 3)
    assert result.stats["rows_written"] == {"REFERRAL_RECURRING": 9}


def add_ten_years_of_rewarded_chains(engine, count: int = 30_000) -> None:
    """Relationships rewarded every 175 minutes from 2016-06 to 2026-05, each referrer referred by
    the one before (level-1 chains), each referred user paying once; then ANALYZE."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_referral_relationships"
            " (referrer_user_id, referred_user_id, referral_code, status, rewarded_at)"
            " SELECT CAST(md5('user' || (n - 1)) AS uuid), CAST(md5('user' || n) AS uuid), 'C', 'REWARDED',"
            "        timestamptz '2016-06-01' + make_interval(mins => n * 175)"
            " FROM generate_series(1, :count) AS n"
        ), {"count": count})
        conn.execute(text(
            "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
            " SELECT gen_random_uuid(), referred_user_id, 2000, 'PAID', rewarded_at + interval '40 days'"
            " FROM public.user_referral_relationships"
        ))
        conn.execute(text("ANALYZE"))


def daily_plan(engine, job_module, settings) -> dict:
    """EXPLAIN (JSON) of the run's plan statement as a daily run (as of 2026-06-02) plans it, after a
    first run whose 30,000 rewards the statistics have not seen yet (no ANALYZE since)."""
    from jobs import rewards

    assert run_job(job_module.JOB, settings=settings, engine=engine, as_of=utc(2026, 6, 1)).status == "SUCCEEDED"
    statement = rewards.plan_statement(settings.payments_table_sql).text
    params = {**job_module.rule_for(settings).params(utc(2026, 6, 2)), "batch_size": 1000}
    with engine.begin() as conn:
        # A query-plan test sets the run's own planner setting (a private statement): the plan is the point.
        conn.execute(rewards._queries["bulk_joins"])
        return conn.execute(text("EXPLAIN (FORMAT JSON) " + statement), params).scalar_one()[0]["Plan"]


def plan_nodes(node: dict):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def assert_one_pass_by_hash_joins(plan: dict) -> None:
    """No correlated subquery and no nested loop (but over a constant-false join): each part of the
    history is read by hash or merge joins, linear in its size, however wrong the row estimates."""
    nodes = list(plan_nodes(plan))
    assert not [node for node in nodes if node.get("Subplan Name", "").startswith("SubPlan")]
    for loop in (node for node in nodes if node["Node Type"] == "Nested Loop"):
        assert any(child.get("One-Time Filter") == "false" for child in loop["Plans"]), loop


def test_the_plan_reads_all_history_by_hash_joins_even_with_stale_statistics(engine, settings):
    add_ten_years_of_rewarded_chains(engine)

    assert_one_pass_by_hash_joins(daily_plan(engine, recurring_rewards, settings))


# ── command line ────────────────────────────────────────────────────────────

def _final_json(completed) -> dict:
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_dry_run_reports_exactly_what_the_real_run_then_writes(engine, cli):
    for rewarded_at in (utc(2026, 1, 1), utc(2026, 2, 15)):
        _, _, referred = rewarded(engine, rewarded_at=rewarded_at)
        for days in (20, 40, 75, 100):
            pay(engine, referred, rewarded_at + timedelta(days=days), cents=1234 + days)

    dry = cli("run", "recurring-rewards", "--as-of", "2026-06-01", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert all_rows(engine) == []
    real = cli("run", "recurring-rewards", "--as-of", "2026-06-01", "--json")
    assert real.returncode == 0, real.stderr

    dry_stats, real_stats = _final_json(dry)["stats"], _final_json(real)["stats"]
    assert dry_stats["rows_written"] == real_stats["rows_written"] == {"REFERRAL_RECURRING": len(all_rows(engine))}
    assert dry_stats["points_written"] == real_stats["points_written"]
    assert real_stats["points_written"]["REFERRAL_RECURRING"] == sum(row[1] for row in all_rows(engine))


@pytest.mark.slow
@pytest.mark.parametrize("value", ["150", "2.5%"])  # every accepted form, in-process: tests/unit/test_settings.py
def test_good_reward_settings_are_accepted(cli, value):
    completed = cli("run", "recurring-rewards", "--dry-run", "--json",
                    env={"REWARDS_RECURRING_REWARD": value, "REWARDS_L2_REWARD": value})

    assert completed.returncode == 0, completed.stderr
    assert _final_json(completed)["status"] == "SUCCEEDED"
