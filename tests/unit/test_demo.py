"""`python scheduler.py demo`: where its database and reports go, its usage, and its summary. (The demo
itself, in a real process: tests/integration/test_demo.py.)"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from cli.demo import DemoOutcome, demo_settings, format_summary
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
