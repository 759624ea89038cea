"""The finance report: HTML seen in headless Chromium, the xlsx opened with openpyxl, `report --format
html|xlsx`, and files that appear together only once the run is recorded."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import text

from core.reports import FileSet
from core.runner import run_job
from jobs import expire_pending, reconcile, reconcile_audit, reconcile_publish
from jobs.reports import finance as finance_report
from jobs.reports.files import ReportFiles
from tests.builders import add_app_points, utc

AS_OF = utc(2026, 6, 1, 1)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _world(engine):
    with engine.begin() as conn:
        for number in range(1, 8):
            add_app_points(conn, user=UUID(int=number), delta=1000 * number, type="REFERRAL_RECURRING",
                           created_at=utc(2026, number % 5 + 1, 3))
        add_app_points(conn, user=UUID(int=1), delta=-300, type="REDEMPTION_QUOTA", created_at=utc(2026, 5, 2))
        add_app_points(conn, user=UUID(int=2), delta=-200, type="EXPIRY", created_at=utc(2026, 4, 2))
        add_app_points(conn, user=UUID(int=3), delta=-100, type="REFERRAL_CLAWBACK", created_at=utc(2026, 3, 2))
        add_app_points(conn, user=UUID(int=9), delta=4321, type="ADMIN_GRANT", created_at=utc(2026, 2, 2),
                       update_cache=False)
        conn.execute(text("UPDATE public.user_point_balances SET balance = balance + 17 WHERE user_id = :u"),
                     {"u": UUID(int=4)})


def _reconciled(engine, settings, as_of=AS_OF):
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of)
    assert result.status == "SUCCEEDED", result.error
    return result


def _paths(settings, run_id, as_of=AS_OF):
    return ReportFiles.for_run(settings.reports_dir, as_of, run_id)


def _summary(settings, run_id):
    return json.loads(_paths(settings, run_id).json.read_text())


def _flatten(value, prefix=""):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    else:
        yield prefix[:-1], value


def _dump_dom(html: Path, tmp_path: Path) -> str:
    done = subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--dump-dom", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _chromium_flags(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_the_html_report_shows_in_chromium_the_numbers_of_the_summary_and_the_database(engine, settings, tmp_path):
    _world(engine)
    run_id = _reconciled(engine, settings).run_id
    html = _paths(settings, run_id).html
    summary = _summary(settings, run_id)

    dom = _dump_dom(html, tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--window-size=1000,2400", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120, check=True)

    assert shot.stat().st_size > 10_000
    shown = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', dom))
    flat = dict(_flatten(summary))
    for key, value in shown.items():
        if key.startswith("monthly."):
            _, month, field = key.split(".")
            expected = next(m[field] for m in summary["monthly"] if m["month"] == month)
        elif key.startswith(("roll_forward.spent.", "roll_forward.expired", "roll_forward.clawed_back")):
            expected = -flat[key]  # a debit line shows its sign once, in its value
        else:
            expected = flat[key]
        assert value == str(expected), key
    assert shown["roll_forward.closing"] == str(summary["outstanding_points"])
    with engine.connect() as conn:
        ledger = conn.execute(text("SELECT sum(delta) FROM public.user_point_transactions WHERE created_at <= :a"),
                              {"a": AS_OF}).scalar_one()
        drifts = dict(conn.execute(text("SELECT CAST(user_id AS text), drift FROM public.reconciliation_discrepancies"
                                        " WHERE run_id = :r"), {"r": run_id}).all())
    assert int(shown["outstanding_points"]) == ledger == 31_721
    assert f"${Decimal(ledger) / 100:,.2f}" in dom  # $317.21
    assert {user: int(value) for user, value in re.findall(r'data-user="([^"]+)" data-value="([^"]*)"', dom)} == drifts
    page = html.read_text()
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert re.findall(r'(?:src|href|url)\s*[=(]\s*["\']?\s*(?:https?:)?//', page) == []  # no request to any host


def test_the_workbook_holds_the_summary_in_numeric_cells_on_every_sheet(engine, settings):
    from openpyxl import load_workbook

    _world(engine)
    run_id = _reconciled(engine, settings).run_id
    summary = _summary(settings, run_id)

    book = load_workbook(_paths(settings, run_id).xlsx)

    assert book.sheetnames == ["Summary", "Roll-forward", "Discrepancies", "Monthly", "Findings"]
    for sheet in book.worksheets:
        assert (sheet["A2"].value, sheet["C2"].value, sheet["D2"].value) == ("As of", "Run", run_id)
        assert sheet["B2"].value == "2026-06-01 01:00:00 UTC"
    values = {row[0]: row[1] for row in book["Summary"].iter_rows(min_row=5, values_only=True)}
    assert values["Outstanding liability (points)"] == summary["outstanding_points"]
    assert Decimal(str(values["Outstanding liability (US$)"])) == Decimal(summary["outstanding_money"]["usd"])
    assert values["Discrepant users"] == summary["discrepancies"]["total"]
    assert values["Net drift (cache - ledger)"] == summary["net_drift"]
    lines = {row[0]: row[1] for row in book["Roll-forward"].iter_rows(min_row=5, values_only=True) if row[0]}
    roll = summary["roll_forward"]
    assert lines["Opening liability"] == roll["opening"] and lines["Closing liability"] == roll["closing"]
    assert lines["Spent: REDEMPTION_QUOTA"] == -roll["spent"]["REDEMPTION_QUOTA"]
    assert (lines["Expired (EXPIRY)"], lines["Clawed back (REFERRAL_CLAWBACK)"]) == (-roll["expired"], -roll["clawed_back"])
    assert {k: v for k, v in lines.items() if k.startswith("Issued: ")} == {
        f"Issued: {kind}": points for kind, points in roll["issued"].items()}
    discrepancies = book["Discrepancies"]
    assert discrepancies.freeze_panes == "A5" and discrepancies.auto_filter.ref.startswith("A4:I")
    rows = list(discrepancies.iter_rows(min_row=5, values_only=True))
    csv_rows = _paths(settings, run_id).csv.read_text().splitlines()[1:]
    assert [",".join("" if cell is None else str(cell) for cell in row) for row in rows] == csv_rows
    assert all(isinstance(row[4], int) for row in rows)
    monthly = [dict(zip(("month", "issued", "spent", "expired", "clawed_back"), row))
               for row in book["Monthly"].iter_rows(min_row=5, values_only=True)]
    assert monthly == summary["monthly"]


@pytest.mark.parametrize("failing_step", ["_stream_discrepancies", "render_html", "write_xlsx", "_insert_run",
                                          "seal"])
def test_a_failure_at_any_step_leaves_no_file_under_a_final_name_and_no_repair(engine, make_settings, monkeypatch,
                                                                              failing_step):
    settings = make_settings()
    _world(engine)

    def fail(*args, **kwargs):
        raise OSError(f"injected failure in {failing_step}")

    target = {"_stream_discrepancies": reconcile_audit, "render_html": finance_report, "write_xlsx": finance_report,
              "_insert_run": reconcile_publish, "seal": FileSet}[failing_step]
    monkeypatch.setattr(target, failing_step, fail)

    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=AS_OF, repair=True)

    assert result.status == "FAILED" and "injected failure" in result.error
    assert sorted(settings.reports_dir.glob("*")) == [] if settings.reports_dir.exists() else True
    assert list(settings.reports_dir.glob(".*")) == [] if settings.reports_dir.exists() else True
    with engine.connect() as conn:
        cached = conn.execute(text("SELECT count(*) FROM public.user_point_balances WHERE user_id = :u"),
                              {"u": UUID(int=9)}).scalar_one()
    assert cached == 0  # the MISSING_BALANCE user was not repaired


def test_the_leftovers_of_a_killed_run_are_removed_by_the_next_one(engine, settings):
    settings.reports_dir.mkdir(parents=True)
    leftover = settings.reports_dir / ".reconciliation-20260501T000000Z-3.html.part"
    leftover.write_text("<html>half")
    other = settings.reports_dir / "notes.txt"
    other.write_text("keep me")

    result = _reconciled(engine, settings)

    assert not leftover.exists() and other.exists()
    assert result.stats["leftovers_removed"] == 1


def test_a_repair_is_published_with_its_count_in_every_file(engine, settings):
    from openpyxl import load_workbook

    _world(engine)
    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=AS_OF, repair=True)
    assert result.status == "SUCCEEDED", result.error

    summary = _summary(settings, result.run_id)
    assert summary["repaired"] == result.stats["repaired"] == 2
    assert 'data-key="repaired" data-value="2"' in _paths(settings, result.run_id).html.read_text()
    values = {row[0]: row[1] for row in load_workbook(_paths(settings, result.run_id).xlsx)["Summary"]
              .iter_rows(min_row=5, values_only=True)}
    assert values["Repaired"] == 2


@pytest.mark.slow
def test_report_renders_html_and_xlsx_for_a_stored_run_and_refuses_other_runs(cli, engine, settings, tmp_path):
    from openpyxl import load_workbook

    _world(engine)
    runs = [run_job(job, settings=settings, engine=engine, as_of=AS_OF, dry_run=dry)  # in-process: `report` is tested
            for job, dry in ((reconcile.JOB, False), (reconcile.JOB, True), (expire_pending.JOB, False))]
    assert [run.status for run in runs] == ["SUCCEEDED"] * 3
    run_id, dry_id, other_id = (run.run_id for run in runs)

    html = cli("report", str(run_id), "--format", "html")
    xlsx = cli("report", "latest", "--format", "xlsx", "--output", str(tmp_path / "close.xlsx"))
    not_a_report = cli("report", str(other_id), "--format", "html")
    dry_report = cli("report", str(dry_id))

    assert html.returncode == 0 and 'data-key="outstanding_points" data-value="31721"' in html.stdout
    assert xlsx.returncode == 0 and load_workbook(tmp_path / "close.xlsx")["Summary"]["D2"].value == run_id
    assert (not_a_report.returncode, not_a_report.stderr.strip().count("\n")) == (2, 0)
    assert f"run {other_id} is a expire-pending run" in not_a_report.stderr
    assert dry_report.returncode == 2 and "dry run" in dry_report.stderr and "Traceback" not in dry_report.stderr
