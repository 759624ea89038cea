"""`explain USER_ID`: support's answer to "where are my points?" — the chain, each reward month's
state and why, the ledger rows with the run that wrote each, and the points expiring next."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import level2_rewards, recurring_rewards
from jobs.explain import explain
from tests.builders import add_relationship, new_id, utc
from tests.integration.test_recurring_rewards import pay

AS_OF = utc(2026, 6, 1)


@pytest.fixture
def chain(engine, make_settings):
    """A referred B (A→B), B referred C (B→C, rewarded 2026-01-10) and C pays months 1..4; month 2's
    payment is refunded after the rewards were written; month 4's is 3 days old under a 7-day hold."""
    settings = make_settings(reward_hold_days=7)
    a, b, c = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, referrer=a, referred=b, status="ACTIVE")
        b_to_c = add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 2, 12))
    refunded = pay(engine, c, utc(2026, 3, 12))
    pay(engine, c, utc(2026, 4, 12))
    pay(engine, c, utc(2026, 5, 29))  # month 4, on hold at AS_OF
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        assert run_job(job, settings=settings, engine=engine, as_of=utc(2026, 5, 1)).status == "SUCCEEDED"
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = :id"),
                     {"id": refunded})
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        assert run_job(job, settings=settings, engine=engine, as_of=utc(2026, 5, 2)).status == "SUCCEEDED"
    return settings, a, b, c, b_to_c


def test_each_reward_month_of_a_referrer_has_its_state_and_reason(engine, chain):
    settings, _, b, c, b_to_c = chain

    found = explain(engine, settings, b, AS_OF)

    states = {month.month: month.state for month in found.months
              if month.relationship_id == b_to_c and month.reward_level == 1}
    assert states[1] == "paid" and states[3] == "paid"
    assert states[2] == "clawed back"
    assert states[4] == "on hold"
    assert states[5] == "not yet"  # month 5 starts 2026-06-10, after the as-of
    assert found.referrer.referrer_user_id is not None  # A referred B
    assert [r.referred_user_id for r in found.referrals if r.referred_user_id == c] == [c]


def test_a_level_2_beneficiary_sees_the_months_of_their_referrals_referrals(engine, chain):
    settings, a, _, _, b_to_c = chain

    found = explain(engine, settings, a, AS_OF)

    level2 = {month.month: month.state for month in found.months
              if month.relationship_id == b_to_c and month.reward_level == 2}
    assert level2[0] == "unpaid"  # month 0 holds no payment of its own here
    assert level2[1] == "paid" and level2[2] == "clawed back"


@pytest.mark.slow
def test_the_cli_explains_a_user_with_rows_and_the_runs_that_wrote_them(engine, chain, cli):
    _, _, b, _, _ = chain

    completed = cli("explain", str(b), "--as-of", "2026-06-01", env={"REWARDS_REWARD_HOLD_DAYS": "7",
                                                                   "COLUMNS": "160"})

    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    for expected in ("Referral chain", "clawed back", "on hold", "REFERRAL_CLAWBACK", "recurring-rewards"):
        assert expected in out, expected
