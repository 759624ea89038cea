"""`python scheduler.py report [RUN_ID|latest] [--format table|csv|json]` reads a reconciliation report
back from the database; `run reconcile --repair` (or REWARDS_RECONCILE_REPAIR) repairs."""
from __future__ import annotations

import json
from uuid import UUID

import pytest
from sqlalchemy import text

from core.clock import parse_as_of
from core.runner import run_job
from jobs import reconcile
from tests.builders import add_app_points, balance_of, utc

pytestmark = pytest.mark.slow

AS_OF = "2026-06-01T01:00:00Z"
MISSING_USER = UUID(int=2)


@pytest.fixture
def ledger_with_one_missing_cache_row(engine):
    with engine.begin() as conn:
        add_app_points(conn, user=UUID(int=1), delta=200, type="REFERRAL_RECURRING", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=UUID(int=1), delta=-50, type="REDEMPTION_QUOTA", created_at=utc(2026, 2, 1))
        add_app_points(conn, user=MISSING_USER, delta=40, type="REFERRAL_WELCOME", created_at=utc(2026, 3, 1),
                       update_cache=False)


def _reconciled(cli, *options, env=None):
    done = cli("run", "reconcile", "--as-of", AS_OF, "--json", *options, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reconciled_here(settings, engine) -> dict:
    """A reconcile run in this process (what is tested is `report` reading it back, in a real process)."""
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=parse_as_of(AS_OF))
    assert result.status == "SUCCEEDED", result.error
    return {"run_id": result.run_id}


def _report_file(tmp_path, run_id, suffix):
    return (tmp_path / "reports" / f"reconciliation-20260601T010000Z-{run_id}.{suffix}").read_text()


def test_report_prints_the_latest_report_as_a_table_a_terminal_can_read(cli, settings, engine,
                                                                       ledger_with_one_missing_cache_row):
    run = _reconciled_here(settings, engine)

    shown = cli("report")

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Points reconciliation: run {run['run_id']} (SUCCEEDED), as of 2026-06-01 01:00:00Z"
    assert ("Outstanding liability (ledger balance as of the as-of instant): 190 points = $1.90"
            " at 100 points per US$") in lines
    assert "Roll-forward since the beginning of the ledger (points)" in lines
    assert any(line.split()[:3] == ["Issued:", "REFERRAL_RECURRING", "+200"] for line in lines)
    assert any(line.split()[:3] == ["Spent:", "REDEMPTION_QUOTA", "-50"] for line in lines)  # the sign once
    assert not any("- spent" in line or "--" in line.replace("----", "") for line in lines if "Spent" in line)
    assert any(line.strip().startswith("identity holds") for line in lines)
    assert "Discrepancies: 1 (MISSING_BALANCE 1)" in lines
    assert any(line.startswith(f"{MISSING_USER}  MISSING_BALANCE") for line in lines)


def test_report_csv_prints_the_csv_file(cli, settings, engine, tmp_path, ledger_with_one_missing_cache_row):
    run = _reconciled_here(settings, engine)

    shown = cli("report", str(run["run_id"]), "--format", "csv")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == _report_file(tmp_path, run["run_id"], "csv")
    assert shown.stdout.splitlines()[1] == f"{MISSING_USER},MISSING_BALANCE,,40,-40,,40,,0"


def test_report_json_prints_the_summary_file(cli, settings, engine, tmp_path, ledger_with_one_missing_cache_row):
    run = _reconciled_here(settings, engine)

    shown = cli("report", "latest", "--format", "json")

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == _report_file(tmp_path, run["run_id"], "json")
    assert json.loads(shown.stdout)["outstanding_points"] == 190


def test_report_latest_is_the_newest_run(cli, settings, engine, ledger_with_one_missing_cache_row):
    first = _reconciled_here(settings, engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM public.user_point_balances"))
    second = _reconciled_here(settings, engine)

    shown = json.loads(cli("report", "--format", "json").stdout)
    older = json.loads(cli("report", str(first["run_id"]), "--format", "json").stdout)

    assert (shown["run_id"], shown["discrepancies"]["total"]) == (second["run_id"], 2)
    assert (older["run_id"], older["discrepancies"]["total"]) == (first["run_id"], 1)


@pytest.mark.parametrize("args, message", [
    (["report", "42"], "no reconciliation report for run 42"),
    (["report"], "no reconciliation report yet"),
])
def test_a_report_that_does_not_exist_exits_1_with_one_line(cli, args, message):
    shown = cli(*args)

    assert shown.returncode == 1
    assert shown.stdout == ""
    assert shown.stderr.strip().splitlines() == [message]


@pytest.mark.parametrize("options, env", [(["--repair"], None), ([], {"REWARDS_RECONCILE_REPAIR": "true"})],
                         ids=["flag", "environment"])
def test_run_reconcile_repairs_with_the_flag_or_the_variable(cli, engine, ledger_with_one_missing_cache_row,
                                                             options, env):
    run = _reconciled(cli, *options, env=env)

    assert run["stats"]["repaired"] == 1
    with engine.connect() as conn:
        assert tuple(balance_of(conn, MISSING_USER)) == (40, 40, 0)
    assert "repaired 1" in cli("report").stdout
