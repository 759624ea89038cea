"""`python scheduler.py demo`: where its database and reports go, its usage, and its summary. (The demo
itself, in a real process: tests/integration/test_demo.py.)"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cli.demo import SAMPLE_YEARS, WEEKS, DemoOutcome, SampleYear, demo_settings, format_summary, world_users
from core.runner import RunResult
from jobs import PipelineSettings

AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def test_demo_rejects_a_sample_without_users(main_in_process):
    code, _, err = main_in_process("demo", "--users", "0")
    assert code == 2 and err.strip() == "error: --users: must be at least 1"


def test_demo_settings_use_the_demo_database_and_keep_reports_under_the_demo_directory(tmp_path):
    settings = PipelineSettings(_env_file=None, database_url="postgresql://app@db/production", data_dir=tmp_path)
    demo = demo_settings(settings, "postgresql://postgres@/rewards_demo")
    assert demo.database_url == "postgresql://postgres@/rewards_demo"
    assert demo.reports_dir == tmp_path / "demo" / "reports"


def test_demo_settings_keep_reports_where_REWARDS_REPORTS_DIR_says(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDS_REPORTS_DIR", str(tmp_path / "finance"))
    demo = demo_settings(PipelineSettings(_env_file=None, data_dir=tmp_path), "postgresql://postgres@/rewards_demo")
    assert demo.reports_dir == tmp_path / "finance"


def test_summary_shows_each_jobs_changes_and_a_failure_with_its_error():
    outcome = DemoOutcome(AS_OF, "postgresql://postgres:***@/rewards_demo", 150,
                          {"referral_codes": 150, "relationships": 140}, reports_dir=Path("reports"))
    outcome.results = [
        RunResult("expire-pending", 1, "SUCCEEDED", AS_OF, {"relationships_expired": 12, "batches": 1}, None, 0.5),
        RunResult("recurring-rewards", 2, "FAILED", AS_OF, {}, "OperationalError: gone", 0.25),
    ]
    summary = format_summary(outcome)
    assert "Sample data: referral codes 150, relationships 140" in summary
    assert "  expire-pending     SUCCEEDED in 0.50s (run 1)\n                     12 relationships expired\n" in summary
    assert "  recurring-rewards  FAILED in 0.25s (run 2)\n                     error: OperationalError: gone\n" in summary
    assert not outcome.succeeded


@pytest.mark.parametrize("end, closed", [
    (datetime(2026, 12, 6, 21, tzinfo=timezone.utc), date(2026, 10, 1)),   # the last weekly run is Nov 29
    (datetime(2026, 12, 8, tzinfo=timezone.utc), date(2026, 11, 1)),       # ... Dec 1: November has ended
    (datetime(2026, 12, 7, 23, 59, tzinfo=timezone.utc), date(2026, 10, 1)),
    (datetime(2027, 1, 5, tzinfo=timezone.utc), date(2026, 11, 1)),        # across the year's end
    (datetime(2026, 3, 8, tzinfo=timezone.utc), date(2026, 2, 1)),         # March 1 closes February
])
def test_the_sample_year_runs_weekly_for_a_year_and_closes_the_last_month_ended_by_its_last_week(end, closed):
    year = SampleYear(end)
    assert len(year.weekly) == WEEKS and year.weekly[0] == year.start == end - timedelta(weeks=WEEKS)
    assert all(later - earlier == timedelta(weeks=1) for earlier, later in zip(year.weekly, year.weekly[1:]))
    assert year.weekly[-1] + timedelta(weeks=1) == end
    assert year.closed == closed
    assert year.closed_until <= year.weekly[-1] < year.closed_until + timedelta(days=38)
    assert year.closed_from == datetime(closed.year, closed.month, 1, tzinfo=timezone.utc)
    assert year.closed_from < year.late_as_of < year.closed_until  # the back-dated run is in the closed month
    assert year.late_as_of.month == closed.month


def test_the_world_is_sized_so_the_year_ends_with_about_the_users_asked_for():
    from cli.sample_data import SampleWorld

    end = datetime(2026, 12, 6, tzinfo=timezone.utc)
    year = SampleYear(end)
    for users in (1, 150, 3000, 100_000):
        world = SampleWorld(world_users(users), 42, year.start, SAMPLE_YEARS)
        assert abs(world.users_until(end) - users) <= max(3, users * 0.01)


def test_the_summary_tells_the_year_the_signed_month_the_restatement_and_commands_that_name_real_ids(tmp_path):
    from cli.sample_data import LatePayment

    outcome = DemoOutcome(AS_OF, "postgresql://postgres:***@/postgres", 150, {"ledger": 900},
                          reports_dir=tmp_path / "reports", data_dir=tmp_path, start=AS_OF - timedelta(weeks=WEEKS))
    outcome.weekly = [RunResult("reconcile", week, "SUCCEEDED", AS_OF - timedelta(weeks=WEEKS - week), {}, None, 0.1)
                      for week in range(WEEKS)]
    outcome.weekly[3] = RunResult("recurring-rewards", 3, "FAILED", AS_OF - timedelta(weeks=WEEKS - 3), {}, "boom", 0.1)
    outcome.weekly[26].stats["repaired"] = 7
    outcome.closed_period, outcome.closed_closing = "2026-04", 123_456
    user = "2a33f538-a206-41f7-f227-5025d26e5b9d"
    outcome.late_payments = [LatePayment(user, "c0ffee00-0000-0000-0000-000000000000", datetime(2026, 4, 9, tzinfo=timezone.utc), 1999)]
    outcome.late_run = RunResult("recurring-rewards", 400, "SUCCEEDED", datetime(2026, 4, 30, 23, 59, 59, tzinfo=timezone.utc),
                                 {"rows_written": {"REFERRAL_RECURRING": 1}, "points_written": {"REFERRAL_RECURRING": 199}},
                                 None, 0.2)
    outcome.results = [RunResult("reconcile", 401, "SUCCEEDED", AS_OF, {}, None, 0.3)]
    outcome.restatements = {"months": [{"period": "2026-04", "signed_by": "Demo Controller", "closing_change": 199,
                                        "closing_change_usd": "1.99", "lines": []}],
                            "total_change": 199, "total_change_usd": "1.99", "months_checked": 1}
    summary = format_summary(outcome, width=200)
    assert f"run-all at {WEEKS} weekly as-ofs from 2025-06-02 to 2026-05-25 ({WEEKS} runs, 1 failed: " \
           "recurring-rewards as of 2025-06-23)" in summary
    assert "Closed: 2026-04, signed off by Demo Controller; closing liability 123,456 points." in summary
    assert "Repaired: reconcile as of 2025-12-01 (run 26) set 7 cache rows to the ledger" in summary
    assert "recurring-rewards SUCCEEDED back-dated to 2026-04-30 23:59:59Z (run 400)" in summary
    assert "The last report restates 2026-04 (signed by Demo Controller), closing +199 points (+$1.99)" in summary
    assert not outcome.succeeded  # a weekly run failed
    commands = [line.strip().split(" ", 2)[-1] for line in summary.splitlines()[-9:-2]]
    assert commands == ["report", "report --period 2026-04", f"balance {user}", f"explain {user}", "history",
                        "show 401", "jobs"]
