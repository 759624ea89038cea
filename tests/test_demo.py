"""`python scheduler.py demo`: its own embedded database (never DATABASE_URL), a fresh sample each
time, the whole pipeline, and a readable summary; where its reports go."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cli.demo import DemoOutcome, demo_settings, format_summary
from core.runner import RunResult
from jobs import PIPELINE, Settings

REPO = Path(__file__).resolve().parent.parent
AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def run_demo_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    # A DATABASE_URL that leads nowhere: the demo must not use it.
    env.update({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/not_the_demo", "REWARDS_DATA_DIR": str(data_dir)})
    return subprocess.run([sys.executable, str(REPO / "scheduler.py"), "demo", *args], cwd=data_dir, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_demo_runs_the_pipeline_on_a_fresh_sample_in_its_own_database_and_summarises_it():
    # Not under pytest's tmp_path: pytest keeps it private, and the embedded server may run as another user.
    with tempfile.TemporaryDirectory(prefix="rewards-demo-test-") as directory:
        data_dir = Path(directory)
        first = run_demo_cli(data_dir, "--users", "150")
        assert first.returncode == 0, first.stderr
        for job in PIPELINE:
            assert f"  {job.name:<18} SUCCEEDED" in first.stdout
        assert "Outstanding liability (ledger balance as of the as-of instant):" in first.stdout
        assert "identity holds: " in first.stdout
        html = [line for line in first.stdout.splitlines() if line.startswith("Finance report (open in a browser): ")]
        assert len(html) == 1 and Path(html[0].split(": ", 1)[1]).is_file()
        assert "Generating sample data: 150 users" in first.stderr
        assert f"Running {PIPELINE[-1].name}" in first.stderr
        reports = data_dir / "demo" / "reports"
        assert len(list(reports.glob("reconciliation-*.csv"))) == len(list(reports.glob("reconciliation-*.json"))) == 1

        explore = [line.strip() for line in first.stdout.splitlines() if line.strip().startswith("export ")]
        assert explore == [f"export DATABASE_URL= REWARDS_DATA_DIR={(data_dir / 'demo').resolve()} "
                           f"REWARDS_REPORTS_DIR={reports.resolve()}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
        env.update(pair.split("=", 1) for pair in explore[0].removeprefix("export ").split())
        history = subprocess.run([sys.executable, str(REPO / "scheduler.py"), "history"], cwd=data_dir, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert history.returncode == 0, history.stderr
        assert len(history.stdout.splitlines()) == 2 + len(PIPELINE)  # the demo's runs, on the demo's database

        second = run_demo_cli(data_dir, "--users", "150")
        assert second.returncode == 0, second.stderr
        sample_line = [line for line in first.stdout.splitlines() if line.startswith("Sample data:")]
        assert sample_line and sample_line == [line for line in second.stdout.splitlines()
                                               if line.startswith("Sample data:")]  # a fresh database again


def test_demo_rejects_a_sample_without_users():
    with tempfile.TemporaryDirectory(prefix="rewards-demo-test-") as directory:
        done = run_demo_cli(Path(directory), "--users", "0")
    assert done.returncode == 2 and done.stderr.strip() == "error: --users: must be at least 1"


def test_demo_settings_use_the_demo_database_and_keep_reports_under_the_demo_directory(tmp_path):
    settings = Settings(_env_file=None, database_url="postgresql://app@db/production", data_dir=tmp_path)
    demo = demo_settings(settings, "postgresql://postgres@/rewards_demo")
    assert demo.database_url == "postgresql://postgres@/rewards_demo"
    assert demo.reports_dir == tmp_path / "demo" / "reports"


def test_demo_settings_keep_reports_where_REWARDS_REPORTS_DIR_says(tmp_path, monkeypatch):
    monkeypatch.setenv("REWARDS_REPORTS_DIR", str(tmp_path / "finance"))
    demo = demo_settings(Settings(_env_file=None, data_dir=tmp_path), "postgresql://postgres@/rewards_demo")
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
