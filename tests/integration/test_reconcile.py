"""reconcile: the cache against the ledger in one snapshot, the report files and tables, repair, and
the roll-forward finance checks."""
from __future__ import annotations

import json
import threading
from uuid import UUID

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import reconcile, reconcile_audit
from tests.builders import add_app_points, balance_of, new_id, utc

AS_OF = utc(2026, 6, 1, 1)
IDENTITY = "opening + issued - spent - expired - clawed_back - recovered + late_committed = closing"
HEADER = ("user_id,kinds,cached_balance,ledger_balance,drift,cached_total_earned,ledger_total_earned,"
          "cached_total_spent,ledger_total_spent")


def _user(number: int) -> UUID:
    return UUID(int=number)


def _reconcile(engine, settings, as_of=AS_OF, **options):
    return run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of, **options)


def _succeeded(engine, settings, as_of=AS_OF, **options):
    result = _reconcile(engine, settings, as_of=as_of, **options)
    assert result.status == "SUCCEEDED", result.error
    return result


def _put_cache(conn, user, balance, earned, spent):
    """The cache row as some bug left it."""
    conn.execute(text(
        "INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent)"
        " VALUES (:user, :balance, :earned, :spent) ON CONFLICT (user_id) DO UPDATE"
        " SET balance = excluded.balance, total_earned = excluded.total_earned, total_spent = excluded.total_spent"
    ), {"user": user, "balance": balance, "earned": earned, "spent": spent})


def _ledger_only(conn, user, delta, created_at=utc(2026, 5, 1), type="REFERRAL_WELCOME"):
    add_app_points(conn, user=user, delta=delta, type=type, created_at=created_at, update_cache=False)


def _files(settings, result):
    stem = f"reconciliation-{AS_OF:%Y%m%dT%H%M%SZ}-{result.run_id}"
    return settings.reports_dir / f"{stem}.csv", settings.reports_dir / f"{stem}.json"


def _csv_lines(settings, result):
    return _files(settings, result)[0].read_text(encoding="utf-8").splitlines()


def _summary(settings, result):
    return json.loads(_files(settings, result)[1].read_text(encoding="utf-8"))


# ── the comparison ───────────────────────────────────────────────────────────

def test_a_cache_true_to_the_ledger_has_no_discrepancy(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=_user(1), delta=-40, type="REDEMPTION_QUOTA", created_at=utc(2026, 2, 1))
        add_app_points(conn, user=_user(2), delta=5, type="ADMIN_GRANT", created_at=utc(2026, 3, 1))
        _put_cache(conn, _user(3), 0, 0, 0)  # a zeroed cache row without ledger rows is fine

    result = _succeeded(engine, settings)

    assert result.stats["discrepancies"] == 0
    assert result.stats["users_checked"] == 3
    assert result.stats["net_drift"] == 0
    assert _csv_lines(settings, result) == [HEADER]


@pytest.mark.parametrize("ledger, cache, expected_row", [
    pytest.param([50], None, "MISSING_BALANCE,,50,-50,,50,,0", id="MISSING_BALANCE"),
    pytest.param([], (10, 10, 0), "ORPHAN_BALANCE,10,0,10,10,0,0,0", id="ORPHAN_BALANCE"),
    pytest.param([100, -30], (100, 100, 0), "BALANCE_MISMATCH|SPENT_MISMATCH,100,70,30,100,100,0,-30",
                 id="BALANCE_MISMATCH"),
    pytest.param([100], (100, 90, 0), "EARNED_MISMATCH|CACHE_INCONSISTENT,100,100,0,90,100,0,0",
                 id="EARNED_MISMATCH"),
    pytest.param([100, -30], (70, 100, -20), "SPENT_MISMATCH|CACHE_INCONSISTENT,70,70,0,100,100,-20,-30",
                 id="SPENT_MISMATCH"),
    pytest.param([], (5, 0, 0), "ORPHAN_BALANCE|CACHE_INCONSISTENT,5,0,5,0,0,0,0", id="CACHE_INCONSISTENT"),
    pytest.param([10, -30], (-20, 10, -30), "NEGATIVE_BALANCE,-20,-20,0,10,10,-30,-30", id="NEGATIVE_BALANCE"),
])
def test_each_discrepancy_kind_is_reported_with_both_sides(engine, settings, ledger, cache, expected_row):
    user = _user(7)
    with engine.begin() as conn:
        for delta in ledger:
            _ledger_only(conn, user, delta)
        if cache is not None:
            _put_cache(conn, user, *cache)

    result = _succeeded(engine, settings)

    assert _csv_lines(settings, result) == [HEADER, f"{user},{expected_row}"]
    kinds = expected_row.split(",")[0].split("|")
    assert result.stats["discrepancies_by_kind"] == {kind: 1 for kind in kinds}


def test_the_csv_lists_every_discrepant_user_in_user_id_order_with_the_exact_header(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(5), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        _ledger_only(conn, _user(3), 25)
        _ledger_only(conn, _user(5), -30, type="REDEMPTION_QUOTA")
        _put_cache(conn, _user(4), 0, 0, 0)
        _put_cache(conn, _user(1), 8, 8, 0)

    result = _succeeded(engine, settings)

    assert _csv_lines(settings, result) == [
        HEADER,
        f"{_user(1)},ORPHAN_BALANCE,8,0,8,8,0,0,0",
        f"{_user(3)},MISSING_BALANCE,,25,-25,,25,,0",
        f"{_user(5)},BALANCE_MISMATCH|SPENT_MISMATCH,100,70,30,100,100,0,-30",
    ]


def test_the_summary_and_the_tables_hold_the_totals_finance_needs(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=200, type="REFERRAL_RECURRING", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=_user(1), delta=-50, type="REDEMPTION_QUOTA", created_at=utc(2026, 2, 1))
        add_app_points(conn, user=_user(2), delta=100, type="REFERRAL_L2", created_at=utc(2026, 3, 1))
        add_app_points(conn, user=_user(2), delta=-30, type="EXPIRY", created_at=utc(2026, 4, 1))
        _ledger_only(conn, _user(3), 40)

    result = _succeeded(engine, settings)

    csv_path, json_path = _files(settings, result)
    summary = _summary(settings, result)
    assert summary["run_id"] == result.run_id
    assert summary["as_of"] == "2026-06-01T01:00:00+00:00"
    assert summary["outstanding_points"] == 260
    assert (summary["users_checked"], summary["ledger_rows"]) == (3, 5)
    assert summary["discrepancies"]["total"] == 1
    assert summary["discrepancies"]["by_kind"]["MISSING_BALANCE"] == 1
    assert summary["ledger"] == {"balance": 260, "total_credits": 340, "total_debits": -80}
    assert summary["cache"] == {"balance": 220, "total_credits": 300, "total_debits": -80, "rows": 2}
    assert summary["outstanding_money"] == {"usd": "2.60", "points_per_usd": "100"}
    assert summary["net_drift"] == -40
    assert (summary["repair_requested"], summary["repaired"]) == (False, 0)
    assert summary["files"] == {"csv": csv_path.name, "json": json_path.name,
                                "html": csv_path.with_suffix(".html").name, "xlsx": csv_path.with_suffix(".xlsx").name,
                                "findings": csv_path.name.replace(".csv", "-findings.csv"),
                                "journal": csv_path.name.replace(".csv", ".journal.csv")}
    assert summary["findings"] == {"total": 0, "by_kind": {"REWARD_INVARIANT": 0, "REWARD_KEY_MISMATCH": 0,
                                                           "RECOVERY_INVARIANT": 0, "EXPIRY_INVARIANT": 0}}
    assert (csv_path.parent / summary["files"]["findings"]).read_text() == (
        "kind,user_id,referred_user_id,level,month,reward_key,points,detail\n")
    assert summary["roll_forward"] == {
        "previous_run_id": None, "period_after": None, "opening": 0,
        "issued": {"REFERRAL_L2": 100, "REFERRAL_RECURRING": 200, "REFERRAL_WELCOME": 40}, "issued_total": 340,
        "spent": {"REDEMPTION_QUOTA": 50}, "spent_total": 50, "expired": 30, "clawed_back": 0, "recovered": 0,
        "late_committed": {"rows": 0, "points": 0}, "late_by_type": {},
        "expected_closing": 260, "closing": 260, "closing_rows": 5, "identity": IDENTITY,
        "identity_holds": True, "gap": 0, "gap_explanation": None,
    }
    with engine.connect() as conn:
        run = conn.execute(text("SELECT * FROM public.reconciliation_runs WHERE run_id = :id"),
                           {"id": result.run_id}).one()
        stored = conn.execute(text("SELECT user_id, kinds, drift FROM public.reconciliation_discrepancies"
                                   " WHERE run_id = :id"), {"id": result.run_id}).all()
    assert (run.as_of, run.users_checked, run.ledger_rows, run.discrepancies) == (AS_OF, 3, 5, 1)
    assert (run.ledger_balance, run.ledger_earned, run.ledger_spent) == (260, 340, -80)
    assert (run.cache_balance, run.cache_earned, run.cache_spent) == (220, 300, -80)
    assert (run.net_drift, run.closing_balance, run.repaired) == (-40, 260, 0)
    assert (run.csv_file, run.json_file) == (str(csv_path), str(json_path))
    assert run.summary == summary
    assert [tuple(row) for row in stored] == [(_user(3), ["MISSING_BALANCE"], -40)]


def test_rows_dated_after_as_of_count_in_the_comparison_but_not_in_the_closing(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=_user(1), delta=-10, type="REDEMPTION_QUOTA", created_at=utc(2026, 6, 1, 1, 0, 3))

    result = _succeeded(engine, settings)

    summary = _summary(settings, result)
    assert result.stats["discrepancies"] == 0
    assert summary["ledger"]["balance"] == 90
    assert summary["roll_forward"]["closing"] == 100
    assert summary["after_as_of"] == {"rows": 1, "points": -10}


# ── files appear whole ───────────────────────────────────────────────────────

def test_a_failure_while_writing_the_report_leaves_no_report_file(engine, make_settings, monkeypatch):
    settings = make_settings(batch_size=1)
    with engine.begin() as conn:
        for number in (1, 2, 3):
            _ledger_only(conn, _user(number), 10)
    real_store_chunk = reconcile_audit._store_chunk
    chunks = []

    def failing_store_chunk(ctx, chunk, store):
        chunks.append(chunk)
        if len(chunks) == 2:
            raise OSError("disk full")
        real_store_chunk(ctx, chunk, store)

    monkeypatch.setattr(reconcile_audit, "_store_chunk", failing_store_chunk)

    result = _reconcile(engine, settings)

    assert result.status == "FAILED"
    assert "disk full" in result.error
    assert list(settings.reports_dir.iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM public.reconciliation_runs")).scalar_one() == 0


def test_a_run_that_lost_its_lease_writes_no_report(engine, settings, monkeypatch):
    with engine.begin() as conn:
        _ledger_only(conn, _user(1), 10)
    real_cache_totals = reconcile_audit._cache_totals

    def read_totals_then_get_taken_over(conn):
        totals = real_cache_totals(conn)
        with engine.begin() as other:
            other.execute(text("UPDATE public.job_runs SET status = 'ABANDONED'"
                               " WHERE job = 'reconcile' AND status = 'RUNNING'"))
        return totals

    monkeypatch.setattr(reconcile_audit, "_cache_totals", read_totals_then_get_taken_over)

    result = _reconcile(engine, settings)

    assert result.status == "ABANDONED"
    assert list(settings.reports_dir.iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT (SELECT count(*) FROM public.reconciliation_runs)"
                                 " + (SELECT count(*) FROM public.reconciliation_discrepancies)")).scalar_one() == 0


# ── repair ───────────────────────────────────────────────────────────────────

def test_repair_sets_each_discrepant_cache_row_to_the_ledger_and_a_rerun_finds_nothing(engine, make_settings):
    settings = make_settings(batch_size=2)
    with engine.begin() as conn:
        _ledger_only(conn, _user(1), 50)                      # missing
        _put_cache(conn, _user(2), 10, 10, 0)                 # orphan
        add_app_points(conn, user=_user(3), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        _ledger_only(conn, _user(3), -30, type="REDEMPTION_QUOTA")  # mismatch
        add_app_points(conn, user=_user(4), delta=60, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))

    repaired = _succeeded(engine, settings, repair=True)

    assert repaired.stats["discrepancies"] == 3
    assert repaired.stats["repaired"] == 3
    with engine.connect() as conn:
        assert tuple(balance_of(conn, _user(1))) == (50, 50, 0)
        assert tuple(balance_of(conn, _user(2))) == (0, 0, 0)
        assert tuple(balance_of(conn, _user(3))) == (70, 100, -30)
        assert tuple(balance_of(conn, _user(4))) == (60, 60, 0)
        assert conn.execute(text("SELECT repaired FROM public.reconciliation_runs WHERE run_id = :id"),
                            {"id": repaired.run_id}).scalar_one() == 3
    summary = _summary(settings, repaired)
    assert (summary["repair_requested"], summary["repaired"]) == (True, 3)
    assert summary["discrepancies"]["total"] == 3  # the report is what was found, before the repair

    rerun = _succeeded(engine, settings)
    assert rerun.stats["discrepancies"] == 0
    assert rerun.stats["net_drift"] == 0


def test_repair_cannot_fix_a_negative_ledger_balance_and_leaves_its_true_cache_alone(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=10, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=_user(1), delta=-30, type="ADMIN_GRANT", created_at=utc(2026, 2, 1))

    result = _succeeded(engine, settings, repair=True)

    assert result.stats["discrepancies_by_kind"] == {"NEGATIVE_BALANCE": 1}
    assert result.stats["repaired"] == 0
    assert _succeeded(engine, settings).stats["discrepancies_by_kind"] == {"NEGATIVE_BALANCE": 1}


def test_a_dry_run_writes_no_table_no_file_and_repairs_nothing(engine, settings):
    with engine.begin() as conn:
        _ledger_only(conn, _user(1), 50)

    result = _succeeded(engine, settings, dry_run=True, repair=True)

    assert result.stats["discrepancies"] == 1
    assert "repaired" not in result.stats
    assert not settings.reports_dir.exists() or list(settings.reports_dir.iterdir()) == []
    with engine.connect() as conn:
        assert balance_of(conn, _user(1)) is None
        assert conn.execute(text("SELECT (SELECT count(*) FROM public.reconciliation_runs)"
                                 " + (SELECT count(*) FROM public.reconciliation_discrepancies)")).scalar_one() == 0


# ── the roll-forward ─────────────────────────────────────────────────────────

def _roll(settings, as_of, result):
    return json.loads((settings.reports_dir / f"reconciliation-{as_of:%Y%m%dT%H%M%SZ}-{result.run_id}.json")
                      .read_text())["roll_forward"]


def test_the_roll_forward_chains_runs_with_one_line_per_movement_kind(engine, settings):
    first_as_of, second_as_of = utc(2026, 4, 1), utc(2026, 5, 1)
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=500, type="REFERRAL_WELCOME", created_at=utc(2026, 3, 1))
    first = _succeeded(engine, settings, as_of=first_as_of)
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=200, type="REFERRAL_RECURRING", created_at=utc(2026, 4, 10))
        add_app_points(conn, user=_user(2), delta=80, type="ADMIN_GRANT", created_at=utc(2026, 4, 11))
        add_app_points(conn, user=_user(2), delta=-20, type="ADMIN_GRANT", created_at=utc(2026, 4, 12))
        add_app_points(conn, user=_user(1), delta=-150, type="REDEMPTION_UNLOCK", created_at=utc(2026, 4, 20))
        add_app_points(conn, user=_user(1), delta=-60, type="REFERRAL_CLAWBACK", created_at=utc(2026, 4, 25))
        add_app_points(conn, user=_user(1), delta=-100, type="EXPIRY", created_at=second_as_of)
    second = _succeeded(engine, settings, as_of=second_as_of)

    assert _roll(settings, second_as_of, second) == {
        "previous_run_id": first.run_id, "period_after": first_as_of.isoformat(), "opening": 500,
        "issued": {"ADMIN_GRANT": 80, "REFERRAL_RECURRING": 200}, "issued_total": 280,
        "spent": {"ADMIN_GRANT": 20, "REDEMPTION_UNLOCK": 150}, "spent_total": 170, "expired": 100,
        "clawed_back": 60, "recovered": 0, "late_committed": {"rows": 0, "points": 0}, "late_by_type": {},
        "expected_closing": 450, "closing": 450, "closing_rows": 7, "identity": IDENTITY,
        "identity_holds": True, "gap": 0, "gap_explanation": None,
    }


def test_rows_committed_after_a_reconcile_but_dated_before_it_are_their_own_line_not_a_gap(engine, settings):
    first_as_of, second_as_of = utc(2026, 5, 1), utc(2026, 6, 1)
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=500, type="REFERRAL_WELCOME", created_at=utc(2026, 4, 1))
    first = _succeeded(engine, settings, as_of=first_as_of)
    with engine.begin() as conn:  # the app's transactions started before the first run, committed after it
        add_app_points(conn, user=_user(3), delta=70, type="ADMIN_GRANT", created_at=first_as_of)
        add_app_points(conn, user=_user(3), delta=-20, type="REDEMPTION_QUOTA", created_at=utc(2026, 4, 30, 23, 59))
        add_app_points(conn, user=_user(3), delta=30, type="REFERRAL_L2", created_at=utc(2026, 5, 15))
    second = _succeeded(engine, settings, as_of=second_as_of)

    roll = _roll(settings, second_as_of, second)
    assert (roll["previous_run_id"], roll["opening"], roll["issued"], roll["spent"]) == (
        first.run_id, 500, {"REFERRAL_L2": 30}, {})
    assert roll["late_committed"] == {"rows": 2, "points": 50}
    assert roll["late_by_type"] == {"ADMIN_GRANT": 70, "REDEMPTION_QUOTA": -20}
    assert (roll["expected_closing"], roll["closing"], roll["identity_holds"], roll["gap"]) == (580, 580, True, 0)
    assert second.stats["late_committed_points"] == 50


def test_ledger_rows_that_vanished_before_the_previous_as_of_are_a_gap_with_its_explanation(engine, settings):
    first_as_of, second_as_of = utc(2026, 5, 1), utc(2026, 6, 1)
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=500, type="REFERRAL_WELCOME", created_at=utc(2026, 4, 1))
        add_app_points(conn, user=_user(2), delta=40, type="ADMIN_GRANT", created_at=utc(2026, 4, 2))
    first = _succeeded(engine, settings, as_of=first_as_of)
    with engine.begin() as conn:  # the append-only trigger is bypassed, as a careless restore would
        conn.execute(text("ALTER TABLE public.user_point_transactions DISABLE TRIGGER USER"))
        conn.execute(text("DELETE FROM public.user_point_transactions WHERE user_id = :user"), {"user": _user(2)})
        conn.execute(text("ALTER TABLE public.user_point_transactions ENABLE TRIGGER USER"))

    second = _succeeded(engine, settings, as_of=second_as_of)

    roll = _roll(settings, second_as_of, second)
    assert roll["late_committed"] == {"rows": 0, "points": 0}
    assert (roll["opening"], roll["expected_closing"], roll["closing"]) == (540, 540, 500)
    assert (roll["identity_holds"], roll["gap"]) == (False, -40)
    assert f"run {first.run_id}" in roll["gap_explanation"] and "2 rows then, 1 now" in roll["gap_explanation"]
    assert second.stats["roll_forward_gap"] == -40


def test_spent_never_includes_expiries_or_clawbacks_in_any_line(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=300, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=_user(1), delta=-100, type="EXPIRY", created_at=utc(2026, 2, 1))
        add_app_points(conn, user=_user(1), delta=-50, type="REFERRAL_CLAWBACK", created_at=utc(2026, 3, 1))
        add_app_points(conn, user=_user(1), delta=-10, type="REDEMPTION_QUOTA", created_at=utc(2026, 4, 1))

    summary = _summary(settings, _succeeded(engine, settings))

    assert summary["roll_forward"]["spent"] == {"REDEMPTION_QUOTA": 10}
    assert (summary["roll_forward"]["expired"], summary["roll_forward"]["clawed_back"]) == (100, 50)
    by_month = {m["month"]: m for m in summary["monthly"]}
    assert [m["month"] for m in summary["monthly"]][0] == "2025-07" and len(summary["monthly"]) == 12
    assert by_month["2026-02"] == {"month": "2026-02", "issued": 0, "spent": 0, "expired": 100, "clawed_back": 0}
    assert by_month["2026-03"]["clawed_back"] == 50 and by_month["2026-04"]["spent"] == 10
    assert "spent" not in json.dumps(summary["ledger"]) + json.dumps(summary["cache"])


def test_the_summary_keeps_its_reading_order_in_the_file_and_the_database(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=300, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
    result = _succeeded(engine, settings)

    text_in_file = _files(settings, result)[1].read_text()
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT summary::text FROM public.reconciliation_runs")).scalar_one()
    assert list(json.loads(text_in_file))[:5] == ["report", "run_id", "as_of", "verdict", "outstanding_points"]
    assert json.loads(stored) == json.loads(text_in_file)
    assert list(json.loads(stored)) == list(json.loads(text_in_file))


def test_a_rerun_for_the_same_as_of_rolls_forward_from_the_run_before_that_as_of(engine, settings):
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
    before = _succeeded(engine, settings, as_of=utc(2026, 5, 1))
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=40, type="REFERRAL_RECURRING", created_at=utc(2026, 5, 20))
    first = _succeeded(engine, settings)

    again = _succeeded(engine, settings)

    first_roll, again_roll = _summary(settings, first)["roll_forward"], _summary(settings, again)["roll_forward"]
    assert again_roll == first_roll
    assert (again_roll["previous_run_id"], again_roll["opening"], again_roll["closing"]) == (before.run_id, 100, 140)


# ── the snapshot ─────────────────────────────────────────────────────────────

def test_the_comparison_reads_one_snapshot_that_later_commits_do_not_change(engine, settings, monkeypatch):
    """A cache corruption committed after the run read its totals is not in its snapshot."""
    with engine.begin() as conn:
        add_app_points(conn, user=_user(1), delta=100, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))
    real_cache_totals = reconcile_audit._cache_totals

    def read_totals_then_corrupt(conn):
        totals = real_cache_totals(conn)
        with engine.begin() as other:
            other.execute(text("UPDATE public.user_point_balances SET balance = 999"))
        return totals

    monkeypatch.setattr(reconcile_audit, "_cache_totals", read_totals_then_corrupt)
    within = _succeeded(engine, settings)
    monkeypatch.undo()

    assert within.stats["discrepancies"] == 0
    assert within.stats["net_drift"] == 0
    assert _succeeded(engine, settings).stats["discrepancies_by_kind"] == {
        "BALANCE_MISMATCH": 1, "CACHE_INCONSISTENT": 1}


@pytest.mark.slow
def test_app_writes_committed_while_reconcile_runs_never_show_as_discrepancies(engine, make_settings):
    settings = make_settings(batch_size=50)
    users = [new_id() for _ in range(400)]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
            " SELECT u, 10 + n % 7, 'REFERRAL_RECURRING', timestamptz '2026-01-01' + n * interval '1 minute'"
            " FROM unnest(CAST(:users AS uuid[])) AS u, generate_series(1, 25) AS n"), {"users": [str(u) for u in users]})
        conn.execute(text(
            "INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent)"
            " SELECT user_id, sum(delta), sum(delta), 0 FROM public.user_point_transactions GROUP BY user_id"))
    stop, writes = threading.Event(), []

    def app_writer():
        number = 0
        while not stop.is_set():
            number += 1
            with engine.begin() as conn:
                if number % 3:
                    add_app_points(conn, user=users[number % len(users)], delta=-1, type="REDEMPTION_QUOTA",
                                   created_at=AS_OF)
                else:
                    add_app_points(conn, user=new_id(), delta=3, type="ADMIN_GRANT", created_at=AS_OF)
            writes.append(number)

    writer = threading.Thread(target=app_writer)
    writer.start()
    try:
        while len(writes) < 20:
            stop.wait(0.01)
        before = len(writes)
        results = [_succeeded(engine, settings) for _ in range(3)]
        during = len(writes) - before
    finally:
        stop.set()
        writer.join(timeout=30)

    assert during > 0
    assert [(r.stats["discrepancies"], r.stats["net_drift"]) for r in results] == [(0, 0)] * 3


def test_the_periods_clawbacks_are_read_by_index_never_by_scanning_every_reward(engine):
    """Rewards pile up by the million; the few clawed back in the period are found through the partial
    index on clawed_back_at (whose predicate the statement must state for the planner to use it)."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.referral_rewards (idempotency_key, relationship_id, level, month, payment_id,"
            " beneficiary_user_id, points, rewarded_at, clawback_key, clawed_back_points, clawed_back_at)"
            " SELECT 'plan-test:' || n, gen_random_uuid(), 1, 1, gen_random_uuid(), gen_random_uuid(), 10,"
            "        timestamptz '2026-01-01', CASE WHEN n % 1000 = 0 THEN 'clawback:plan-test:' || n END,"
            "        CASE WHEN n % 1000 = 0 THEN 10 ELSE 0 END,"
            "        CASE WHEN n % 1000 = 0 THEN timestamptz '2026-05-01' + n * interval '1 second' END"
            " FROM generate_series(1, 20000) AS n"))
        conn.execute(text("ANALYZE public.referral_rewards"))
    with engine.connect() as conn:
        # A query-plan test reads the job's private statement: a plan belongs to the statement's text, not to a run.
        plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + reconcile_audit._queries.raw("unrecovered_clawbacks")),
                            {"previous_as_of": utc(2026, 5, 1), "as_of": AS_OF}).scalar_one()[0]["Plan"]

    assert "idx_referral_rewards_clawed_back_at" in json.dumps(plan)
    assert '"Seq Scan"' not in json.dumps(plan)
