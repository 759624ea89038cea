"""expiring-soon: the CRM's CSV of points that expire in (as_of, as_of + REWARDS_EXPIRY_NOTICE_DAYS days],
per user and UTC day, by SPEC's X(t); no ledger writes."""
from __future__ import annotations

from uuid import UUID

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import expiring_soon
from tests.builders import add_analyzed_ledger, add_app_points, plan_nodes, utc

HEADER = "user_id,points,expires_on,balance"


def _user(number: int) -> UUID:
    return UUID(int=number)


def _earn(conn, user, delta, created_at, type="REFERRAL_WELCOME"):
    add_app_points(conn, user=user, delta=delta, type=type, created_at=created_at)


def _run(engine, settings, as_of, **options):
    result = run_job(expiring_soon.JOB, settings=settings, engine=engine, as_of=as_of, **options)
    assert result.status == "SUCCEEDED", result.error
    return result


def _lines(settings, result, as_of):
    path = settings.reports_dir / f"expiring-{as_of:%Y%m%dT%H%M%SZ}-{result.run_id}.csv"
    return path.read_text().splitlines()


def test_the_window_includes_its_end_and_excludes_the_as_of(engine, make_settings):
    settings = make_settings(expiry_notice_days=30)
    as_of = utc(2026, 6, 1, 12)
    with engine.begin() as conn:
        _earn(conn, _user(1), 10, utc(2025, 6, 1, 11))        # expirable already at as_of: excluded
        _earn(conn, _user(2), 20, utc(2025, 6, 1, 12))        # E(as_of) is strict: expires just after as_of
        _earn(conn, _user(3), 30, utc(2025, 7, 1, 11, 59, 59))  # before the window's end: included
        _earn(conn, _user(4), 40, utc(2025, 7, 1, 12))        # exactly at the window's end - N months: not yet

    result = _run(engine, settings, as_of)

    assert _lines(settings, result, as_of) == [
        HEADER, f"{_user(2)},20,2026-06-01,20", f"{_user(3)},30,2026-07-01,30"]
    assert (result.stats["users"], result.stats["points"], result.stats["rows"]) == (2, 50, 2)


def test_debits_consume_the_oldest_points_first(engine, settings):
    as_of = utc(2026, 6, 1)
    with engine.begin() as conn:
        _earn(conn, _user(1), 100, utc(2025, 5, 1))   # expirable at as_of already
        _earn(conn, _user(1), 50, utc(2025, 6, 10))
        _earn(conn, _user(1), 70, utc(2025, 6, 20))
        _earn(conn, _user(1), -120, utc(2026, 3, 1), type="REDEMPTION_QUOTA")  # 100 + 20 of the 50

    result = _run(engine, settings, as_of)

    assert _lines(settings, result, as_of) == [
        HEADER, f"{_user(1)},30,2026-06-10,100", f"{_user(1)},70,2026-06-20,100"]
    assert (result.stats["users"], result.stats["points"]) == (1, 100)


def test_a_user_whose_debits_cover_everything_gets_no_notice(engine, settings):
    as_of = utc(2026, 6, 1)
    with engine.begin() as conn:
        _earn(conn, _user(1), 50, utc(2025, 6, 10))
        _earn(conn, _user(1), -50, utc(2026, 1, 1), type="REDEMPTION_QUOTA")

    assert _lines(settings, _run(engine, settings, as_of), as_of) == [HEADER]


def test_a_month_end_that_steps_the_cutoff_back_never_announces_a_point_twice(engine, make_settings):
    """Mar 28 12:00 - 1 month = Feb 28 12:00, but Mar 29 00:00 - 1 month = Feb 28 00:00 (2026 is no leap year)."""
    settings = make_settings(points_expiry_months=1, expiry_notice_days=5)
    as_of = utc(2026, 3, 28, 12)
    with engine.begin() as conn:
        _earn(conn, _user(1), 10, utc(2026, 2, 28, 6))   # expirable at as_of already
        _earn(conn, _user(2), 20, utc(2026, 2, 28, 18))  # first passed by Apr 1 00:00 - 1 month = Mar 1
        _earn(conn, _user(3), 30, utc(2026, 3, 1, 6))    # passed by Apr 2 00:00 - 1 month = Mar 2

    result = _run(engine, settings, as_of)

    assert _lines(settings, result, as_of) == [
        HEADER, f"{_user(2)},20,2026-03-31,20", f"{_user(3)},30,2026-04-01,30"]


def test_rows_are_ordered_by_day_then_user_with_the_ledger_balance_now(engine, settings):
    as_of = utc(2026, 6, 1)
    with engine.begin() as conn:
        _earn(conn, _user(2), 5, utc(2025, 6, 3))
        _earn(conn, _user(1), 7, utc(2025, 6, 3, 23))
        _earn(conn, _user(1), 9, utc(2025, 6, 2))
        _earn(conn, _user(1), 1000, utc(2026, 5, 1))
        _earn(conn, _user(1), -5, utc(2026, 6, 5), type="REDEMPTION_QUOTA")  # dated after as_of: counts too

    result = _run(engine, settings, as_of)

    assert _lines(settings, result, as_of) == [
        HEADER, f"{_user(1)},4,2026-06-02,1011", f"{_user(1)},7,2026-06-03,1011", f"{_user(2)},5,2026-06-03,5"]


def test_zero_notice_days_turns_the_job_off(engine, make_settings):
    settings = make_settings(expiry_notice_days=0)
    with engine.begin() as conn:
        _earn(conn, _user(1), 5, utc(2025, 6, 3))

    result = _run(engine, settings, utc(2026, 6, 1))

    assert result.stats["disabled"] == "REWARDS_EXPIRY_NOTICE_DAYS=0"
    assert not settings.reports_dir.exists() or list(settings.reports_dir.iterdir()) == []


def test_a_dry_run_counts_but_writes_no_file_and_no_ledger_row(engine, settings):
    with engine.begin() as conn:
        _earn(conn, _user(1), 5, utc(2025, 6, 3))

    result = _run(engine, settings, utc(2026, 6, 1), dry_run=True)

    assert (result.stats["users"], result.stats["points"]) == (1, 5)
    assert not settings.reports_dir.exists() or list(settings.reports_dir.iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM public.user_point_transactions")).scalar_one() == 1


def test_the_file_appears_whole_and_a_killed_runs_leftover_is_removed(engine, settings, monkeypatch):
    settings.reports_dir.mkdir(parents=True)
    leftover = settings.reports_dir / ".expiring-20260501T000000Z-9.csv.part"
    leftover.write_text("half")
    with engine.begin() as conn:
        _earn(conn, _user(1), 5, utc(2025, 6, 3))

    def failing_count(ctx, chunk):
        raise OSError("disk full")

    monkeypatch.setattr(expiring_soon, "_count", failing_count)
    failed = run_job(expiring_soon.JOB, settings=settings, engine=engine, as_of=utc(2026, 6, 1))
    assert failed.status == "FAILED"
    assert list(settings.reports_dir.iterdir()) == []
    monkeypatch.undo()

    result = _run(engine, settings, utc(2026, 6, 1))
    assert [path.name for path in settings.reports_dir.iterdir()] == [f"expiring-20260601T000000Z-{result.run_id}.csv"]


@pytest.mark.slow
def test_the_cli_writes_the_crm_file(cli, engine, tmp_path):
    with engine.begin() as conn:
        _earn(conn, _user(1), 5, utc(2025, 6, 3))

    done = cli("run", "expiring-soon", "--as-of", "2026-06-01", "--json", env={"REWARDS_EXPIRY_NOTICE_DAYS": "7"})

    assert done.returncode == 0, done.stderr
    files = list((tmp_path / "reports").glob("expiring-20260601T000000Z-*.csv"))
    assert [path.read_text().splitlines() for path in files] == [[HEADER, f"{_user(1)},5,2026-06-03,5"]]


def test_only_the_ledgers_of_users_with_points_crossing_a_cutoff_are_read(engine):
    """Only a user with an earning row dated in the crossing window can have points expiring: those users
    come from an index of the ledger by date, and only their ledgers are read, each by its user_id.
    (Summing every user's ledger, as it once did, was most of the job's time at scale.)"""
    with engine.begin() as conn:
        add_analyzed_ledger(conn, rows=200000, first_at=utc(2025, 6, 30, 20))  # 240 in the window, 139 days on
    with engine.connect() as conn:
        # A query-plan test reads the job's private statement: a plan belongs to the statement's text, not to a run.
        plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + expiring_soon._queries.raw("expiring")), {
            "as_of": utc(2026, 6, 1), "window_end": utc(2026, 7, 1), "months": 12}).scalar_one()[0]["Plan"]

    nodes = plan_nodes(plan)
    ledger_reads = [node for node in nodes if node.get("Relation Name") == "user_point_transactions"]
    conditions = [node.get("Index Cond") or node.get("Recheck Cond") for node in ledger_reads]
    assert ledger_reads and all(conditions), conditions  # every read keyed, none of the whole ledger
    by_user = [condition for condition in conditions if condition.startswith("(user_id =")]
    by_date = [condition for condition in conditions if "created_at >=" in condition]
    assert by_user and by_date and len(by_user) + len(by_date) == len(conditions), conditions
