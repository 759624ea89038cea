"""Exactly once (SPEC "reconcile"): chains of reconciles between reward and expiry runs at random as-ofs
(past ones too), refunds that make clawbacks, recoveries, and app rows dated in the past. Summed over
all reports, each roll-forward line equals the ledger's total of its line type, and the clawbacks'
figures equal referral_rewards' totals: every row, unrecovered amount and recovery counted once. Every
report's identities hold and the rules audit finds nothing."""
from __future__ import annotations

import json
import random
from collections import Counter
from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import expire_points, level2_rewards, reconcile, recurring_rewards
from jobs.reconcile_summary import CLAWBACK, EXPIRY, RECOVERY
from tests.builders import add_app_points, add_payment, add_relationship, utc

START = utc(2025, 1, 1)


def _world(conn, rng: random.Random) -> list[UUID]:
    users = [UUID(int=n) for n in range(1, 13)]
    for referred in users[1:]:
        referrer = rng.choice(users[:users.index(referred)])
        rewarded_at = START + timedelta(days=rng.randint(0, 60), hours=rng.randint(0, 23))
        add_relationship(conn, referrer=referrer, referred=referred, status="REWARDED", rewarded_at=rewarded_at)
        for month in range(rng.randint(2, 14)):
            add_payment(conn, user=referred, amount_cents=rng.choice((900, 2000, 4500)),
                        paid_at=rewarded_at + timedelta(days=30 * month + rng.randint(1, 25)))
    return users


def _summary(result) -> dict:
    return json.loads(open(result.stats["report"].replace(".csv", ".json"), encoding="utf-8").read())


def _step(engine, settings, rng: random.Random, users: list[UUID], now) -> None:
    """One of: a reward run (level 1 and 2) at now or in the past, expire-points, refunds, app rows."""
    choice = rng.random()
    with engine.begin() as conn:
        if choice < 0.25:  # refunds: the next reward run claws back
            conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id IN"
                              " (SELECT id FROM public.user_subscription_payments WHERE status = 'PAID' AND paid_at <= :now"
                              "  ORDER BY id LIMIT :n)"), {"now": now, "n": rng.randint(1, 3)})
        for _ in range(rng.randint(0, 3)):  # app rows, some dated months back (late for a reconcile)
            back = timedelta(days=rng.randint(0, 200)) if rng.random() < 0.4 else timedelta(hours=rng.randint(0, 20))
            kind, delta = rng.choice((("ADMIN_GRANT", 120), ("REDEMPTION_QUOTA", -40), ("REFERRAL_WELCOME", 60)))
            user = rng.choice(users)
            with conn.begin_nested():
                balance = conn.execute(text("SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions"
                                            " WHERE user_id = :u"), {"u": user}).scalar_one()
                if balance + delta >= 0:
                    add_app_points(conn, user=user, delta=delta, type=kind, created_at=now - back)
    as_of = now - timedelta(days=rng.choice((0, 0, 0, 3, 20)))  # sometimes a run for a past date
    for job in (recurring_rewards.JOB, level2_rewards.JOB) + ((expire_points.JOB,) if rng.random() < 0.5 else ()):
        result = run_job(job, settings=settings, engine=engine, as_of=as_of)
        assert result.status == "SUCCEEDED", result.error


def _line_totals(conn) -> Counter:
    """The ledger's net points by roll-forward line type (recoveries apart)."""
    rows = conn.execute(text(
        "SELECT CASE WHEN type = :clawback AND idempotency_key LIKE 'recover:%' THEN :recovery ELSE type END AS line,"
        " sum(delta) AS points FROM public.user_point_transactions GROUP BY 1"),
        {"clawback": CLAWBACK, "recovery": RECOVERY})
    return Counter({row.line: int(row.points) for row in rows if row.points})


def _reported(summaries: list[dict]) -> Counter:
    total: Counter = Counter()
    for summary in summaries:
        roll = summary["roll_forward"]
        for kind, points in roll["issued"].items():
            total[kind] += points
        for kind, points in roll["spent"].items():
            total[kind] -= points
        total[EXPIRY] -= roll["expired"]
        total[CLAWBACK] -= roll["clawed_back"]
        total[RECOVERY] -= roll["recovered"]
        for kind, points in (roll["late_by_type"] or {}).items():
            total[kind] += points
    return Counter({kind: points for kind, points in total.items() if points})


@pytest.mark.parametrize("seed", range(4))
def test_summed_over_a_chain_of_reports_every_line_equals_the_ledger_and_the_clawback_record(engine, settings, seed):
    rng = random.Random(7000 + seed)
    with engine.begin() as conn:
        users = _world(conn, rng)
    summaries = []
    now = START + timedelta(days=40)
    for _ in range(9):
        _step(engine, settings, rng, users, now)
        if rng.random() < 0.7:
            summaries.append(_summary(_reconcile(engine, settings, now)))
        now += timedelta(days=rng.randint(15, 50))
    summaries.append(_summary(_reconcile(engine, settings, now)))  # the last as-of is after every row

    for summary in summaries:
        assert summary["roll_forward"]["identity_holds"], summary["roll_forward"]
        assert summary["unrecovered_clawbacks"]["identity_holds"]
        assert summary["findings"]["total"] == 0, summary["findings"]
    with engine.connect() as conn:
        ledger = _line_totals(conn)
        record = conn.execute(text(
            "SELECT count(*) AS clawbacks, coalesce(sum(clawed_back_points), 0) AS taken,"
            " coalesce(sum(expired_points), 0) AS expired, coalesce(sum(unrecovered_points), 0) AS unrecovered,"
            " coalesce(sum(recovered_points), 0) AS recovered"
            " FROM public.referral_rewards WHERE clawback_key IS NOT NULL")).one()
    assert _reported(summaries) == ledger
    figures = [summary["unrecovered_clawbacks"] for summary in summaries]
    assert sum(f["clawbacks"] for f in figures) == record.clawbacks
    assert sum(f["clawed_back_points"] for f in figures) == record.taken
    assert sum(f["expired_points"] for f in figures) == record.expired
    assert sum(f["unrecovered_points"] for f in figures) == record.unrecovered
    assert sum(f["recovered_points"] for f in figures) == record.recovered == -ledger.get(RECOVERY, 0)
    assert figures[-1]["outstanding_points"] == record.unrecovered - record.recovered
    for earlier, later in zip(figures, figures[1:]):
        assert later["outstanding_opening"] == earlier["outstanding_points"]


def _reconcile(engine, settings, as_of):
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def test_a_clawback_written_by_a_run_for_a_past_date_is_in_the_next_report(engine, settings):
    """issue 24: a past-dated clawback's clawed_back_at falls before the previous reconcile; the next report
    still shows its unrecovered points, as late."""
    referrer, referred = UUID(int=1), UUID(int=2)
    with engine.begin() as conn:
        add_relationship(conn, referrer=referrer, referred=referred, status="REWARDED", rewarded_at=utc(2026, 1, 5))
        payment = add_payment(conn, user=referred, paid_at=utc(2026, 2, 10), amount_cents=3500)
    for job in (recurring_rewards.JOB, level2_rewards.JOB):
        assert run_job(job, settings=settings, engine=engine, as_of=utc(2026, 3, 1)).status == "SUCCEEDED"
    with engine.begin() as conn:  # the points are spent: the clawback will take nothing
        add_app_points(conn, user=referrer, delta=-350, type="REDEMPTION_QUOTA", created_at=utc(2026, 3, 2))
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = :id"),
                     {"id": payment})
    _reconcile(engine, settings, utc(2026, 4, 1))
    assert run_job(recurring_rewards.JOB, settings=settings, engine=engine, as_of=utc(2026, 3, 15)).status == "SUCCEEDED"

    figures = _summary(_reconcile(engine, settings, utc(2026, 5, 1)))["unrecovered_clawbacks"]

    assert (figures["clawbacks"], figures["unrecovered_points"], figures["late"]) == (
        1, 350, {"clawbacks": 1, "unrecovered_points": 350})
    assert (figures["outstanding_opening"], figures["outstanding_points"]) == (0, 350)
    assert figures["money"]["unrecovered_usd"] == "3.50"
