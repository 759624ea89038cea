"""`python scheduler.py demo`, the real process: its own embedded database (never DATABASE_URL), a fresh
sample each time, a year of weekly run-alls, a month signed off and restated, and a summary whose
commands work as printed. (Its calendar, settings and summary: tests/unit/test_demo.py.)"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from cli.demo import SIGNER, WEEKS
from jobs import PIPELINE

REPO = Path(__file__).resolve().parents[2]
USERS = "150"


def run_demo_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
    # A DATABASE_URL that leads nowhere: the demo must not use it.
    env.update({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/not_the_demo", "REWARDS_DATA_DIR": str(data_dir)})
    return subprocess.run([sys.executable, str(REPO / "scheduler.py"), "demo", *args], cwd=data_dir, env=env,
                          capture_output=True, text=True, timeout=900)


class Demo:
    """One demo run: its directory, its output, and the environment and commands its summary prints."""

    def __init__(self, data_dir: Path, run: subprocess.CompletedProcess) -> None:
        self.data_dir, self.run = data_dir, run
        lines = run.stdout.splitlines()
        explore = [line.strip() for line in lines if line.strip().startswith("export ")]
        self.export = explore[0] if len(explore) == 1 else ""
        start = next((number for number, line in enumerate(lines) if line.strip().startswith("export ")), len(lines))
        self.commands = [line.strip() for line in lines[start + 1:] if line.startswith("  ")]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
        self.env.update(pair.split("=", 1) for pair in self.export.removeprefix("export ").split())

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(REPO / "scheduler.py"), *args], cwd=self.data_dir, env=self.env,
                              capture_output=True, text=True, timeout=300)

    def json(self, *args: str):
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def demo():
    # Not under pytest's tmp_path: pytest keeps it private, and the embedded server may run as another user.
    with tempfile.TemporaryDirectory(prefix=f"rewards-demo-test-{os.getpid()}-") as directory:
        data_dir = Path(directory)
        yield Demo(data_dir, run_demo_cli(data_dir, "--users", USERS))


@pytest.mark.slow
def test_demo_runs_a_year_of_the_pipeline_in_its_own_database_and_summarises_it(demo):
    assert demo.run.returncode == 0, demo.run.stderr
    out, err = demo.run.stdout, demo.run.stderr
    for job in PIPELINE:
        assert f"  {job.name:<18} SUCCEEDED" in out
    assert f"run-all at {WEEKS} weekly as-ofs" in out and f"({WEEKS * len(PIPELINE):,} runs," in out
    assert "all succeeded" in out
    assert "Outstanding liability" in out and "identity holds: " in out
    html = [line for line in out.splitlines() if line.startswith("Finance report (open in a browser): ")]
    assert len(html) == 1 and Path(html[0].split(": ", 1)[1]).is_file()
    assert "Generating sample data:" in err and "arrive late" in err
    reports = demo.data_dir / "demo" / "reports"
    reconciliation_jsons = [path for path in reports.glob("reconciliation-*.json")]
    assert len(reconciliation_jsons) == WEEKS + 1  # every week's reconcile and the last one
    assert demo.export == (f"export DATABASE_URL= REWARDS_DATA_DIR={(demo.data_dir / 'demo').resolve()} "
                           f"REWARDS_REPORTS_DIR={reports.resolve()}")


@pytest.mark.slow
def test_the_demos_reconciles_are_weekly_over_the_year_and_every_month_of_it_issues_points(demo):
    reconciles = [run for run in demo.json("history", "--job", "reconcile", "--limit", "200")["runs"]
                  if run["status"] == "SUCCEEDED"]
    as_ofs = sorted(datetime.fromisoformat(run["as_of"]) for run in reconciles)
    assert len(as_ofs) == WEEKS + 1
    assert all(later - earlier == timedelta(weeks=1) for earlier, later in zip(as_ofs, as_ofs[1:]))
    assert as_ofs[-1] - as_ofs[0] == timedelta(weeks=WEEKS)
    by_as_of = sorted(reconciles, key=lambda run: run["as_of"])
    repaired = [number for number, run in enumerate(by_as_of) if run["stats"].get("repaired")]
    assert len(repaired) == 1  # ops repaired the cache once, half way through the year
    drift = [run["stats"]["discrepancies"] for run in by_as_of]
    after = drift[repaired[0] + 1]
    assert after < drift[repaired[0]] and drift[-1] > after  # it builds up again after the repair
    months = demo.json("report")["monthly"]
    assert len(months) == 12
    issued = [month["issued"] for month in months[:-1]]  # the 11 whole months (the last is the as-of's)
    assert min(issued) > 0 and max(issued) < sum(issued) / 2, months  # a year of activity, not one spike


@pytest.mark.slow
def test_the_demo_signs_a_month_off_and_its_last_report_restates_it(demo):
    out = demo.run.stdout
    period = next(line for line in out.splitlines() if line.startswith("Closed: ")).split()[1].rstrip(",")
    signed = demo.json("report", "--period", period)
    assert signed["status"] == "SIGNED" and signed["signed_by"] == SIGNER and signed["period"] == period
    restated = demo.json("report")["restatements"]
    assert [month["period"] for month in restated["months"]] == [period]
    month = restated["months"][0]
    assert month["closing_change"] > 0 and restated["total_change"] == month["closing_change"]
    recurring = [line for line in month["lines"] if line["key"] == "issued.REFERRAL_RECURRING"]
    assert len(recurring) == 1 and recurring[0]["change"] > 0  # the late payments' rewards
    assert recurring[0]["now"] - recurring[0]["signed"] == recurring[0]["change"]
    movements = [line for line in month["lines"] if line["key"] not in ("opening", "closing")]
    assert sum(line["change"] for line in movements) == month["closing_change"]
    # the month as signed is what `report --period` shows; the report compares today's ledger with it
    closing = next(line for line in month["lines"] if line["key"] == "closing")
    assert closing["signed"] == signed["outstanding_points"] == signed["roll_forward"]["closing"]
    assert closing["now"] == closing["signed"] + month["closing_change"]
    assert f"The last report restates {period}" in out.replace("\n  ", " ")


@pytest.mark.slow
def test_every_command_the_demo_prints_works_as_printed(demo):
    assert [command.split(" ", 2)[-1].split()[0] for command in demo.commands] == [
        "report", "report", "balance", "explain", "history", "show", "jobs"]
    for command in demo.commands:
        done = subprocess.run(shlex.split(command), cwd=demo.data_dir, env=demo.env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.strip(), command
    history = demo.cli("history")
    assert "reconcile" in history.stdout  # the demo's runs, on the demo's database
    user = next(command.split()[-1] for command in demo.commands if " balance " in command)
    balance = demo.json("balance", user)
    assert balance["user_id"] == user and balance["balance"] >= 0


@pytest.mark.slow
def test_the_demo_starts_from_a_fresh_database_each_time(demo):
    from sqlalchemy import text

    from cli.demo import fresh_demo_database
    from core.db import make_engine

    engine = make_engine(fresh_demo_database(demo.data_dir))
    try:
        with engine.connect() as conn:
            tables = conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar_one()
    finally:
        engine.dispose()
    assert tables == 0
