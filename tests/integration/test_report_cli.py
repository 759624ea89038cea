"""`python scheduler.py report [RUN_ID|latest] [--format table|csv|json]` reads a reconciliation report
back from the database; `run reconcile --repair` (or REWARDS_RECONCILE_REPAIR) repairs."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import text

from core.clock import parse_as_of
from core.runner import run_job
from jobs import reconcile
from tests.builders import add_app_points, balance_of, utc

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
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


def _reconciled_here(settings, engine, as_of=AS_OF) -> dict:
    """A reconcile run in this process (what is tested is `report` reading it back, in a real process)."""
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=parse_as_of(as_of))
    assert result.status == "SUCCEEDED", result.error
    return {"run_id": result.run_id}


def _report_file(tmp_path, run_id, suffix):
    return (tmp_path / "reports" / f"reconciliation-20260601T010000Z-{run_id}.{suffix}").read_text()


def test_report_prints_the_latest_report_as_a_table_a_terminal_can_read(cli, settings, engine,
                                                                       ledger_with_one_missing_cache_row):
    run = _reconciled_here(settings, engine)

    shown = cli("report", env={"COLUMNS": "80"})

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"Points reconciliation: run {run['run_id']} (SUCCEEDED), as of 2026-06-01 01:00:00Z"
    assert "Outstanding liability: 190 points = $1.90 at 100 points per US$" in lines
    assert any(line.startswith("  Covers the whole ledger up to 2026-06-01 01:00:00 UTC") for line in lines)
    assert any(line.split()[:5] == ["Recurring", "referral", "rewards", "+200", "+$2.00"] for line in lines)
    assert any(line.split()[:5] == ["Redeemed", "for", "quota", "-50", "-$0.50"] for line in lines)  # the sign once
    assert any(line.split()[:5] == ["Total", "used", "up", "-50", "-$0.50"] for line in lines)
    assert any(line.strip().startswith("identity holds") for line in lines)
    assert "Discrepancies: 1 (MISSING_BALANCE 1)" in lines
    assert any(line.startswith(f"{MISSING_USER}") and "MISSING_BALANCE" in line for line in lines)
    assert max(len(line) for line in lines) <= 80


def _two_reconciles_with_every_kind_of_discrepancy(settings, engine):
    """A previous reconcile beside the latest, and a user with several discrepancy kinds."""
    _reconciled_here(settings, engine, as_of="2026-02-15T00:00:00Z")
    with engine.begin() as conn:
        add_app_points(conn, user=UUID(int=1), delta=-20, type="ADMIN_GRANT", created_at=utc(2026, 4, 1))
        conn.execute(text("UPDATE public.user_point_balances SET balance = balance + 17, total_earned = 3"
                          " WHERE user_id = :u"), {"u": UUID(int=1)})
    return _reconciled_here(settings, engine)


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_report_fits_the_width_it_is_piped_into_by_leaving_out_whole_columns(cli, settings, engine, columns,
                                                                            ledger_with_one_missing_cache_row):
    _two_reconciles_with_every_kind_of_discrepancy(settings, engine)

    shown = cli("report", env={"COLUMNS": str(columns)})

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert any(line.startswith("  Previous: run 1, as of 2026-02-15 00:00:00 UTC") for line in lines)
    adjustments = next(line for line in lines if line.startswith("Adjustments (negative grants)"))
    assert adjustments.split()[3:6] == ["-20", "-$0.20", "0"]  # this period, its money, the previous one's
    user = str(UUID(int=1))
    if columns < 80:  # narrower than an id and its kinds: the id is folded onto two lines, never cut
        user = next(line for line in lines if line.startswith(user[:20])).split()[0]
        assert user in str(UUID(int=1)) and str(UUID(int=1)).removeprefix(user) in shown.stdout
    assert any(line.startswith(user) for line in lines)  # the id whole at 80 columns
    kinds = "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith(user)):])
    for kind in ("BALANCE_MISMATCH", "EARNED_MISMATCH", "CACHE_INCONSISTENT"):
        assert kind in kinds  # folded onto more lines, never cut
    header = next(line for line in lines if line.startswith("line "))
    if columns < 80:  # too narrow for the words beside the numbers: they follow the table
        assert "What the lines are:" in [line.strip() for line in lines] and "meaning" not in header
        assert any(line.strip().startswith("Redeemed for quota: points users redeemed for quota") for line in lines)
    else:
        assert "What the lines are:" not in [line.strip() for line in lines] and "meaning" in header
    assert ("prev. US$" in header) == (columns == 200)  # the previous period's money goes first
    assert any("ledger earned" in line for line in lines) == (columns == 200)
    if columns == 200:
        assert any(line.startswith("Redeemed for quota") and "points users redeemed for quota" in line
                   for line in lines)


def test_report_reads_at_80_columns_on_a_terminal(settings, engine, database_url, tmp_path,
                                                  ledger_with_one_missing_cache_row):
    """In a pseudo-terminal 80 columns wide, read as the screen shows it (pyte)."""
    import pexpect
    import pyte

    _two_reconciles_with_every_kind_of_discrepancy(settings, engine)
    env = {key: value for key, value in os.environ.items() if not key.startswith("REWARDS_") and key != "COLUMNS"}
    env.update({"DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports"),
                "REWARDS_LOG_FORMAT": "json", "TERM": "xterm"})
    screen = pyte.Screen(80, 400)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(sys.executable, [str(REPO / "scheduler.py"), "report"], env=env, cwd=str(tmp_path),
                          dimensions=(400, 80), timeout=120)
    while True:
        try:
            stream.feed(child.read_nonblocking(65536, timeout=120))
        except pexpect.EOF:
            break
    child.close()

    shown = [line.rstrip() for line in screen.display]
    assert child.exitstatus == 0, "\n".join(shown)
    assert shown[0].startswith("Points reconciliation: run 2 (SUCCEEDED)")
    assert any(line.startswith(str(UUID(int=1))) for line in shown)  # ids whole at 80 columns
    assert any(line.startswith("Total issued") for line in shown) and any("Closing liability" in line for line in shown)
    assert not any(line.endswith("…") for line in shown)  # nothing cut


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
