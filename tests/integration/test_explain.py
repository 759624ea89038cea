"""`explain USER_ID`: support's answer to "where are my points?" — the chain, each reward month's
state and why, the ledger rows with the run that wrote each, and the points expiring next."""
from __future__ import annotations

import json
import random
from datetime import timedelta

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


# ── the same derivation as the jobs: explain says what the next run writes ──

def _states(found, relationship_id, level=1):
    return {m.month: m.state for m in found.months if m.relationship_id == relationship_id and m.reward_level == level}


def test_a_refund_not_yet_clawed_back_shows_to_be_clawed_back_not_paid(engine, chain):
    settings, _, b, c, b_to_c = chain
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED'"
                          " WHERE user_id = :c AND paid_at = :at"), {"c": c, "at": utc(2026, 2, 12)})

    month_1 = next(m for m in explain(engine, settings, b, AS_OF).months
                   if m.relationship_id == b_to_c and m.reward_level == 1 and m.month == 1)

    assert month_1.state == "to be clawed back"
    assert month_1.key == f"clawback:recurring:{b_to_c}:1" and month_1.points == -200


def test_a_zero_point_month_is_nothing_to_pay_not_due_forever(engine, make_settings):
    settings = make_settings(recurring_reward="0%")
    b, c = new_id(), new_id()
    with engine.begin() as conn:
        relationship = add_relationship(conn, referrer=b, referred=c, status="REWARDED", rewarded_at=utc(2026, 1, 10))
    pay(engine, c, utc(2026, 2, 12))
    assert run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=AS_OF).status == "SUCCEEDED"

    found = explain(engine, settings, b, AS_OF)

    assert _states(found, relationship)[1] == "nothing to pay"
    assert found.to_write == []


def test_the_as_of_shows_the_world_then_and_written_by_names_the_run_that_wrote_the_row(engine, chain):
    settings, _, b, _, b_to_c = chain
    with engine.connect() as conn:
        first_run = conn.execute(text("SELECT min(id) FROM public.job_runs WHERE job = 'recurring-rewards'")).scalar_one()
    # a re-run of the first as-of writes nothing, and must not be named as the writer
    assert run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 5, 1)).status == "SUCCEEDED"

    before_clawback = explain(engine, settings, b, utc(2026, 5, 1, 12))
    now = explain(engine, settings, b, AS_OF)

    assert all(row.created_at <= utc(2026, 5, 1, 12) for row in before_clawback.ledger)
    assert not any(row.type == "REFERRAL_CLAWBACK" for row in before_clawback.ledger)
    assert any(row.type == "REFERRAL_CLAWBACK" for row in now.ledger)
    reward = next(row for row in now.ledger if row.idempotency_key == f"recurring:{b_to_c}:1")
    assert (reward.run_id, reward.job) == (first_run, "recurring-rewards")


def test_after_a_parent_change_each_parent_sees_the_months_as_they_stand(engine, chain):
    settings, a, b, c, b_to_c = chain
    new_parent = new_id()
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.user_referral_relationships SET referrer_user_id = :p"
                          " WHERE referred_user_id = :b"), {"p": new_parent, "b": b})

    old = explain(engine, settings, a, AS_OF)
    new = explain(engine, settings, new_parent, AS_OF)

    assert _states(old, b_to_c, level=2)[1] == "paid"  # A keeps the level-2 rewards written to them
    new_states = {m.month: (m.state, m.why) for m in new.months if m.reward_level == 2}
    assert new_states[1][0] == "paid" and str(a) in new_states[1][1]  # paid, to A
    assert new.to_write == []


@pytest.mark.slow
def test_the_cli_says_an_unknown_user_exists_nowhere_and_gives_json_for_scripts(engine, chain, cli):
    _, _, b, _, _ = chain

    unknown = cli("explain", str(new_id()))
    document = cli("explain", str(b), "--as-of", "2026-06-01", "--json", env={"REWARDS_REWARD_HOLD_DAYS": "7"})

    assert unknown.returncode == 1 and "no user" in unknown.stderr
    assert document.returncode == 0, document.stderr
    found = json.loads(document.stdout)
    assert {m["state"] for m in found["months"]} >= {"paid", "clawed back", "on hold", "not yet"}
    assert found["ledger"] and all(row["created_at"] <= "2026-06-01" for row in found["ledger"])


def _next_run_rows(engine, settings, as_of) -> dict[str, tuple]:
    """Run both reward jobs at as_of; the rows they wrote, by key: (user, points) for rewards."""
    with engine.connect() as conn:
        before = {row[0] for row in conn.execute(text("SELECT idempotency_key FROM public.user_point_transactions"
                                                      " WHERE idempotency_key IS NOT NULL"))}
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        assert run_job(job, settings=settings, engine=engine, as_of=as_of).status == "SUCCEEDED"
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT idempotency_key, user_id, delta FROM public.user_point_transactions"
                                 " WHERE idempotency_key IS NOT NULL")).all()
        recorded = {row[0]: row[1] for row in conn.execute(text(
            "SELECT clawback_key, beneficiary_user_id FROM public.referral_rewards WHERE clawback_key IS NOT NULL"))}
    written = {key: (user, delta if not key.startswith("clawback:") else None)
               for key, user, delta in rows if key not in before and not key.startswith("recover:")}
    # a clawback that took 0 points writes no ledger row but is recorded: explain announces it too
    written.update({key: (user, None) for key, user in recorded.items() if key not in written and key not in before})
    return written


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_explain_announces_exactly_what_the_next_runs_write_for_every_user(engine, make_settings, seed):
    rng = random.Random(seed)
    settings = make_settings(reward_hold_days=rng.choice([0, 3]))
    users = [new_id() for _ in range(7)]
    with engine.begin() as conn:
        for i, referred in enumerate(users):
            if rng.random() < 0.85:
                add_relationship(conn, referrer=users[(i + rng.choice([1, 2, 3])) % len(users)], referred=referred,
                                 status=rng.choice(["ACTIVE", "REWARDED", "REWARDED"]),
                                 rewarded_at=utc(2025, rng.randint(1, 6), rng.choice([1, 15, 28])))
    paid_at = {}
    for _ in range(30):
        at = utc(2025, rng.randint(1, 12), rng.randint(1, 28))
        paid_at[pay(engine, rng.choice(users), at, cents=rng.choice([2000, 999, 5]))] = at
    payments = list(paid_at)
    as_ofs = sorted(utc(2025, m, 1) for m in rng.sample(range(3, 13), 4)) + [utc(2026, 1, 15)]
    for as_of in as_ofs:
        with engine.begin() as conn:  # billing moves between runs
            for payment in rng.sample(payments, 4):
                paid_at[payment] += timedelta(days=20)  # used by the date correction only
                conn.execute(text(rng.choice([
                    "UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = :id",
                    "UPDATE public.user_subscription_payments SET status = 'PAID' WHERE id = :id",
                    "UPDATE public.user_subscription_payments SET paid_at = :moved WHERE id = :id",
                    "UPDATE public.user_subscription_payments SET amount_cents = amount_cents + 100 WHERE id = :id"])),
                    {"id": payment, "moved": paid_at[payment]})
        announced = {}
        for user in users:
            for fact in explain(engine, settings, user, as_of).to_write:
                announced[fact.idempotency_key] = (fact.user_id, None if fact.action == "clawback" else int(fact.points))
        assert announced == _next_run_rows(engine, settings, as_of), f"seed {seed}, as-of {as_of}"
