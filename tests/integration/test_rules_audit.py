"""reconcile's rules audit (jobs/rules_audit.py): nothing found after normal pipeline runs; each planted
violation found with its kind, in the table, the findings CSV, the summary, the run's stats and /metrics;
the ledger never changed by it."""
from __future__ import annotations

import csv
import json
from collections import Counter
from uuid import UUID

from sqlalchemy import text

from core.metrics import LastSuccessCollector
from core.runner import run_job
from jobs import expire_points, level2_rewards, reconcile, recurring_rewards
from tests.builders import add_app_points, add_payment, add_relationship, utc

AS_OF = utc(2026, 6, 1)
A, B, C = UUID(int=1), UUID(int=2), UUID(int=3)


def _world(engine) -> None:
    """A invited B, B invited C; both pay monthly: A earns level 1 on B and level 2 on C, B level 1 on C."""
    with engine.begin() as conn:
        add_relationship(conn, referrer=A, referred=B, status="REWARDED", rewarded_at=utc(2026, 1, 5))
        add_relationship(conn, referrer=B, referred=C, status="REWARDED", rewarded_at=utc(2026, 1, 10))
        for month in range(1, 6):
            add_payment(conn, user=B, paid_at=utc(2026, month, 20), amount_cents=2000)
            add_payment(conn, user=C, paid_at=utc(2026, month, 25), amount_cents=3000)


def _pipeline(engine, settings, as_of=AS_OF) -> None:
    for job in (recurring_rewards.JOB, level2_rewards.JOB, expire_points.JOB):
        result = run_job(job, settings=settings, engine=engine, as_of=as_of)
        assert result.status == "SUCCEEDED", result.error


def _reconcile(engine, settings, as_of=AS_OF):
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def _ledger(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT count(*), coalesce(sum(delta), 0) FROM public.user_point_transactions")).one())


def _findings(engine, run_id) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM public.reconciliation_findings WHERE run_id = :id ORDER BY number"),
                                 {"id": run_id}))


def _violations_metric(engine) -> dict[str, float]:
    families = list(LastSuccessCollector(engine, ["reconcile"]).collect())
    return {sample.labels["kind"]: sample.value for family in families
            if family.name == "rewards_invariant_violations" for sample in family.samples}


def test_normal_pipeline_runs_leave_nothing_to_find(engine, settings):
    _world(engine)
    _pipeline(engine, settings, utc(2026, 3, 15))
    _pipeline(engine, settings)

    result = _reconcile(engine, settings)

    assert _findings(engine, result.run_id) == []
    assert result.stats["findings"] == 0
    assert _violations_metric(engine) == {"REWARD_INVARIANT": 0.0, "REWARD_KEY_MISMATCH": 0.0,
                                          "RECOVERY_INVARIANT": 0.0, "EXPIRY_INVARIANT": 0.0}


def test_each_planted_violation_is_found_by_kind_and_the_ledger_is_left_alone(engine, settings):
    _world(engine)
    _pipeline(engine, settings)
    with engine.begin() as conn:
        # a duplicated reward: a second standing record of A's level-1 month 2 (an earlier relationship
        # row of B's, as before month identity), credited too
        conn.execute(text("""
            INSERT INTO public.referral_rewards (idempotency_key, relationship_id, level, month, payment_id,
                   beneficiary_user_id, points, rewarded_at, referred_user_id, basis_paid_at, basis_amount_cents)
            SELECT idempotency_key || '-dup', gen_random_uuid(), level, month, payment_id, beneficiary_user_id, points,
                   rewarded_at, referred_user_id, basis_paid_at, basis_amount_cents
            FROM public.referral_rewards WHERE level = 1 AND referred_user_id = :b AND month = 2"""), {"b": B})
        conn.execute(text("""
            INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)
            SELECT beneficiary_user_id, points, 'REFERRAL_RECURRING', idempotency_key, rewarded_at
            FROM public.referral_rewards WHERE idempotency_key LIKE '%-dup'"""))
        # a reward whose basis is refunded, not clawed back (no run since)
        refunded = conn.execute(text(
            "UPDATE public.user_subscription_payments SET status = 'REFUNDED' WHERE id = (SELECT payment_id"
            " FROM public.referral_rewards WHERE level = 1 AND referred_user_id = :c AND month = 3) RETURNING id"),
            {"c": C}).scalar_one()
        # an unexpired lot past its expiry (earned two years before, never expired)
        add_app_points(conn, user=C, delta=500, type="ADMIN_GRANT", created_at=utc(2024, 5, 1))
        # a recovery larger than what was owed (nothing was)
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)"
            " VALUES (:a, -50, 'REFERRAL_CLAWBACK', :key, :at)"),
            {"a": A, "at": AS_OF, "key": f"recover:{A}:{AS_OF.isoformat()}:1"})
    before = _ledger(engine)

    result = _reconcile(engine, settings)

    assert _ledger(engine) == before
    found = _findings(engine, result.run_id)
    kinds = Counter(row.kind for row in found)
    reward = [row for row in found if row.kind == "REWARD_INVARIANT"]
    assert any("standing rewards for one month" in row.detail and row.referred_user_id == B and row.month == 2
               for row in reward)
    assert any(f"basis payment {refunded} is REFUNDED" in row.detail for row in reward)
    assert [(row.user_id, row.points) for row in found if row.kind == "EXPIRY_INVARIANT"] == [(C, 500)]
    recovery = [row for row in found if row.kind == "RECOVERY_INVARIANT"]
    assert [(row.user_id, row.points) for row in recovery] == [(A, 50)]
    assert kinds["REWARD_INVARIANT"] == len(reward) >= 2
    summary = json.loads(open(result.stats["report"].replace(".csv", ".json"), encoding="utf-8").read())
    assert summary["findings"] == {"total": len(found), "by_kind": {
        "REWARD_INVARIANT": kinds["REWARD_INVARIANT"], "REWARD_KEY_MISMATCH": 0, "RECOVERY_INVARIANT": 1,
        "EXPIRY_INVARIANT": 1}}
    assert result.stats["invariant_violations"] == summary["findings"]["by_kind"]
    assert _violations_metric(engine) == {kind: float(n) for kind, n in summary["findings"]["by_kind"].items()}
    findings_csv = settings.reports_dir / summary["files"]["findings"]
    with findings_csv.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["kind"] for row in rows] == [row.kind for row in found]
    html = (settings.reports_dir / summary["files"]["html"]).read_text(encoding="utf-8")
    assert 'data-key="findings.by_kind.EXPIRY_INVARIANT" data-value="1"' in html
    from openpyxl import load_workbook

    sheet = load_workbook(settings.reports_dir / summary["files"]["xlsx"])["Findings"]
    assert [row[0] for row in sheet.iter_rows(min_row=5, values_only=True)] == [row.kind for row in found]


def test_a_reward_credit_with_another_amount_or_no_record_is_a_finding(engine, settings):
    _world(engine)
    _pipeline(engine, settings)
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.referral_rewards SET points = points + 1"
                          " WHERE level = 2 AND referred_user_id = :c AND month = 1"), {"c": C})
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)"
            " VALUES (:b, 77, 'REFERRAL_RECURRING', 'recurring:00000000-0000-0000-0000-000000000009:1', :at)"),
            {"b": B, "at": AS_OF})

    found = _findings(engine, _reconcile(engine, settings).run_id)

    details = [row.detail for row in found if row.kind == "REWARD_KEY_MISMATCH"]
    assert any("the record says" in detail for detail in details)
    assert any("no referral_rewards record" in detail for detail in details)


def _month_key(engine, prefix: str, referred: UUID, month: int) -> tuple[str, UUID]:
    """The key the reward job will write for `referred`'s month, and its beneficiary."""
    with engine.connect() as conn:
        relationship, referrer = conn.execute(text(
            "SELECT id, referrer_user_id FROM public.user_referral_relationships WHERE referred_user_id = :u"),
            {"u": referred}).one()
    return f"{prefix}:{relationship}:{month}", referrer


def test_a_reward_key_inserted_before_the_job_with_another_amount_is_reported_never_paid_silently(engine, settings):
    """Issue 28: a 1-point recurring: key pre-inserted where the rule gives 200 (10 % of $20.00)."""
    _world(engine)
    key, referrer = _month_key(engine, "recurring", B, 1)
    relationship = key.split(":")[1]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)"
            " VALUES (:u, 1, 'REFERRAL_RECURRING', :r, :key, :at)"), {"u": referrer, "r": relationship, "key": key,
                                                                     "at": utc(2026, 2, 25)})
    _pipeline(engine, settings)

    result = _reconcile(engine, settings)

    mismatches = [row for row in _findings(engine, result.run_id) if row.kind == "REWARD_KEY_MISMATCH"]
    assert [(row.reward_key, row.points) for row in mismatches] == [(key, 1)], mismatches
    # recorded as the month's reward by today's job (its record priced against the rule), or left
    # unrecorded by a job that pays the month apart: reported either way
    assert "where the rule gives 200" in mismatches[0].detail or "no referral_rewards record" in mismatches[0].detail
    assert result.stats["invariant_violations"]["REWARD_KEY_MISMATCH"] == 1
    assert _violations_metric(engine)["REWARD_KEY_MISMATCH"] == 1.0
    summary = json.loads(open(result.stats["report"].replace(".csv", ".json"), encoding="utf-8").read())
    assert summary["findings"]["by_kind"]["REWARD_KEY_MISMATCH"] == 1
    with (settings.reports_dir / summary["files"]["findings"]).open(encoding="utf-8") as handle:
        assert [row["reward_key"] for row in csv.DictReader(handle) if row["kind"] == "REWARD_KEY_MISMATCH"] == [key]
    html = (settings.reports_dir / summary["files"]["html"]).read_text(encoding="utf-8")
    assert 'data-key="findings.by_kind.REWARD_KEY_MISMATCH" data-value="1"' in html
    # and it stays reported on the days after, not only at the as-of of the run that met it
    _pipeline(engine, settings, utc(2026, 6, 2))
    later = _reconcile(engine, settings, utc(2026, 6, 2))
    assert [row.reward_key for row in _findings(engine, later.run_id) if row.kind == "REWARD_KEY_MISMATCH"] == [key]


def test_a_reward_key_of_another_type_is_a_mismatch(engine, settings):
    _world(engine)
    _pipeline(engine, settings)
    key = "l2:00000000-0000-0000-0000-00000000000a:0"
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key, created_at)"
                          " VALUES (:a, 40, 'ADMIN_GRANT', :key, :at)"), {"a": A, "key": key, "at": AS_OF})

    found = _findings(engine, _reconcile(engine, settings).run_id)

    assert [(row.kind, row.reward_key) for row in found] == [("REWARD_KEY_MISMATCH", key)]
    assert "ADMIN_GRANT" in found[0].detail


def test_rewards_written_under_settings_since_changed_are_no_mismatch(engine, make_settings):
    """A reward is priced by the settings of the run that wrote it, not by today's."""
    _world(engine)
    _pipeline(engine, make_settings(recurring_reward="150", l2_reward="2%"), utc(2026, 3, 15))
    settings = make_settings()
    _pipeline(engine, settings)

    found = _findings(engine, _reconcile(engine, settings).run_id)

    assert found == []
