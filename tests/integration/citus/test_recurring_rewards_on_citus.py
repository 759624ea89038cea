"""tests/integration/test_recurring_rewards.py, every test of it, against the 3-node Citus cluster
(see conftest.py), and one test of the cluster's own."""
from sqlalchemy import text

from tests.builders import utc
from tests.integration.citus.conftest import PORT, _autocommit_statement
from tests.integration.test_recurring_rewards import *  # noqa: F401,F403  (pytest collects the imported tests here too)
from tests.integration.test_recurring_rewards import rewarded, run


def test_the_plan_gathers_the_whole_history_past_citus_guard_on_intermediate_results(
        engine, make_settings, database_url):
    """On Citus the plan compares owed and written months on the coordinator, from intermediate results
    that grow with the whole history: at 2M users they passed Citus's guard (1 GB) and the job failed.
    The plan's transaction lifts the guard. Here it is 32 kB for the database: above what a batch of two
    relationships gathers, below what the plan over 100 relationships' 12 months gathers."""
    name = database_url.rsplit("/", 1)[1]
    _autocommit_statement(PORT, f'ALTER DATABASE "{name}" SET citus.max_intermediate_result_size = 32')
    engine.dispose()
    for _ in range(100):
        _, _, referred = rewarded(engine, rewarded_at=utc(2025, 1, 10))
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
                " SELECT gen_random_uuid(), :user, 2000, 'PAID', CAST(:first AS timestamptz) + make_interval(months => k)"
                " FROM generate_series(1, 12) AS k"), {"user": referred, "first": utc(2025, 1, 12)})

    result = run(engine, make_settings(batch_size=2), utc(2026, 3, 1))

    assert result.stats["rows_written"] == {"REFERRAL_RECURRING": 1200}
