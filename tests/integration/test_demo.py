"""`python scheduler.py demo`, the real process: its own embedded database (never DATABASE_URL), a fresh
sample each time, the whole pipeline, and a readable summary. (Its settings and summary:
tests/unit/test_demo.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs import PIPELINE

REPO = Path(__file__).resolve().parents[2]


def run_demo_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    # A DATABASE_URL that leads nowhere: the demo must not use it.
    env.update({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/not_the_demo", "REWARDS_DATA_DIR": str(data_dir)})
    return subprocess.run([sys.executable, str(REPO / "scheduler.py"), "demo", *args], cwd=data_dir, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_demo_runs_the_pipeline_on_a_fresh_sample_in_its_own_database_and_summarises_it():
    # Not under pytest's tmp_path: pytest keeps it private, and the embedded server may run as another user.
    with tempfile.TemporaryDirectory(prefix=f"rewards-demo-test-{os.getpid()}-") as directory:
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
        reconciliation_csvs = [path for path in reports.glob("reconciliation-*.csv") if not path.name.endswith("-findings.csv")]
        assert len(reconciliation_csvs) == len(list(reports.glob("reconciliation-*.json"))) == 1
        assert len(list(reports.glob("reconciliation-*-findings.csv"))) == 1

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
