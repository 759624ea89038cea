"""The finance report: HTML seen in headless Chromium, the xlsx opened with openpyxl, `report --format
html|xlsx`, and files that appear together only once the run is recorded."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import date, datetime
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
from tests.finance_documents import (check_every_number, check_roll_forward_sheet, evaluated, pdf_pages,
                                     period_document, usd)

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


def _dump_dom(html: Path, tmp_path: Path) -> str:
    done = subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--dump-dom", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _chromium_flags(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}"]


def _reconcile_with_a_previous_one(engine, settings):
    _world(engine)
    first = _reconciled(engine, settings, as_of=utc(2026, 3, 15)).run_id
    with engine.begin() as conn:  # a type the first period had and the second has not: shown as 0 beside it
        add_app_points(conn, user=UUID(int=5), delta=-40, type="ADMIN_GRANT", created_at=utc(2026, 5, 20))
    return first, _reconciled(engine, settings).run_id


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_the_html_report_shows_in_chromium_the_numbers_of_the_summary_and_the_database(engine, settings, tmp_path):
    first, run_id = _reconcile_with_a_previous_one(engine, settings)
    html = _paths(settings, run_id).html
    summary = _summary(settings, run_id)
    previous = json.loads(ReportFiles.for_run(settings.reports_dir, utc(2026, 3, 15), first).json.read_text())

    dom = _dump_dom(html, tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--window-size=1000,2400", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120, check=True)

    assert shot.stat().st_size > 10_000
    shown = check_every_number(dom, summary, previous["roll_forward"])
    assert shown["roll_forward.closing"] == str(summary["outstanding_points"])
    assert shown["previous.closing"] == str(previous["roll_forward"]["closing"]) == shown["roll_forward.opening"]
    assert shown["roll_forward.spent.ADMIN_GRANT"] == "-40" and shown["previous.spent.ADMIN_GRANT"] == "0"
    with engine.connect() as conn:
        ledger = conn.execute(text("SELECT sum(delta) FROM public.user_point_transactions WHERE created_at <= :a"),
                              {"a": AS_OF}).scalar_one()
        drifts = dict(conn.execute(text("SELECT CAST(user_id AS text), drift FROM public.reconciliation_discrepancies"
                                        " WHERE run_id = :r"), {"r": run_id}).all())
    assert int(shown["outstanding_points"]) == ledger == 31_681
    assert f"${Decimal(ledger) / 100:,.2f}" in dom  # $316.81
    assert {user: int(value) for user, value in re.findall(r'data-user="([^"]+)" data-value="([^"]*)"', dom)} == drifts
    page = html.read_text()
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert re.findall(r'(?:src|href|url)\s*[=(]\s*["\']?\s*(?:https?:)?//', page) == []  # no request to any host


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("which", ["reconcile", "period"])
def test_the_report_prints_on_a4_without_an_empty_page(engine, settings, tmp_path, which):
    """Printed by Chromium (as a controller prints it): A4 pages, none of them all but blank (a section
    that may not break inside once pushed whole to the next page and left one nearly empty)."""
    if which == "reconcile":
        html = _paths(settings, _reconcile_with_a_previous_one(engine, settings)[1]).html
    else:
        html = tmp_path / "close.html"
        html.write_text(finance_report.render_html(finance_report.period_report(period_document())))
    pdf = tmp_path / "printed.pdf"

    subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--no-pdf-header-footer", f"--print-to-pdf={pdf}",
                    html.as_uri()], capture_output=True, timeout=120, check=True)

    pages = pdf_pages(pdf)
    assert len(pages) >= 2
    assert {tuple(round(side) for side in box) for box, _ in pages} == {(0, 0, 595, 842)}  # A4 in points
    fullest = max(texts for _, texts in pages)
    assert [texts for _, texts in pages[:-1] if texts < 0.3 * fullest] == [], pages  # no page all but blank
    assert pages[-1][1] >= 40, pages  # nor a last page holding a line or two


PHONE_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="phone" src="%s" style="width:390px;height:3000px;border:0"></iframe>
<script>
document.getElementById('phone').addEventListener('load', () => {
  const page = document.getElementById('phone').contentWindow, d = page.document;
  const right = (selector) => [...d.querySelectorAll(selector)].map(e => Math.round(e.getBoundingClientRect().right));
  const seen = {width: page.innerWidth, page: d.documentElement.scrollWidth, drift: right('td.drift'),
    boxes: right('.scroll, .cards, header, p, h2, figure'),
    ids: [...d.querySelectorAll('td.uid')].map(td => [td.textContent, td.title])};
  const out = document.createElement('pre'); out.id = 'seen'; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script></body></html>"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("which", ["reconcile", "period"])
def test_the_report_reads_on_a_390_pixel_phone(engine, settings, tmp_path, which):
    """Laid out by Chromium 390 px wide (a test page frames the report and measures it; the report itself
    has no script): nothing wider than the screen but inside a box that scrolls on its own, the drift in
    sight, ids shortened with the whole id in a tooltip."""
    if which == "reconcile":
        html = _paths(settings, _reconcile_with_a_previous_one(engine, settings)[1]).html
    else:
        html = tmp_path / "close.html"
        html.write_text(finance_report.render_html(finance_report.period_report(period_document())))
    probe = html.parent / "phone.html"
    probe.write_text(PHONE_PROBE % html.name)

    done = subprocess.run([CHROMIUM, *_chromium_flags(tmp_path), "--allow-file-access-from-files",
                           "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                          capture_output=True, text=True, timeout=120)
    seen = json.loads(re.search(r'<pre id="seen">(.*?)</pre>', done.stdout).group(1))

    assert seen["width"] == 390 and seen["page"] <= 390  # the page itself never scrolls sideways
    assert [right for right in seen["boxes"] if right > 390] == []
    if which == "reconcile":
        assert len(seen["drift"]) == 2 and max(seen["drift"]) <= 390
        assert all(len(shown) <= 9 and shown.rstrip("\u2026") == whole[:len(shown.rstrip("\u2026"))]
                   and len(whole) == 36 for shown, whole in seen["ids"])


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium); .ci/run installs it")
def test_a_restated_month_shows_in_chromium_with_every_number_of_its_restatement(engine, settings, tmp_path):
    """April signed off, then a row dated in April arrives: the next reconcile's report lists the change
    by line, in points and money, and every number of it is the summary's."""
    from jobs import period_close

    _world(engine)
    period_close.close(engine, settings, date(2026, 4, 1), sign_off="Dana Controller")
    with engine.begin() as conn:
        add_app_points(conn, user=UUID(int=6), delta=250, type="REFERRAL_RECURRING", created_at=utc(2026, 4, 20))
    run_id = _reconciled(engine, settings).run_id
    summary = _summary(settings, run_id)

    dom = _dump_dom(_paths(settings, run_id).html, tmp_path)

    restated = summary["restatements"]
    assert restated["total_change"] == 250 and restated["months"][0]["period"] == "2026-04"
    assert restated["months"][0]["closing_change"] == 250
    shown = check_every_number(dom, summary, None)
    assert shown["restatements.2026-04.issued.REFERRAL_RECURRING.change"] == "250"
    assert shown["restatements.2026-04.issued.REFERRAL_RECURRING.change_usd"] == "2.50"
    assert shown["restatements.total_change"] == "250" and "Restatements of signed-off months" in dom
    closing = next(line for line in restated["months"][0]["lines"] if line["key"] == "closing")
    assert shown["restatements.2026-04.closing.now"] == str(closing["now"]) == str(closing["signed"] + 250)
    with engine.connect() as conn:  # and the terminal prints the same change, with the closing once
        from jobs.reports import stored as stored_reports
        from cli.report import report_table

        stored = stored_reports.find(conn, run_id)
        table = report_table(stored, [], document=stored_reports.document(conn, stored), width=80).splitlines()
    restated_rows = [line for line in table if line.startswith("2026-04")]
    assert [row.split()[-2:] for row in restated_rows] == [["+250", "+$2.50"], ["+250", "+$2.50"]]
    assert restated_rows[-1].split()[1:3] == ["Closing", "liability"]


def test_every_line_of_the_roll_forward_says_what_it_is_with_its_money_and_sign(engine, settings):
    _, run_id = _reconcile_with_a_previous_one(engine, settings)
    with engine.connect() as conn:
        document = finance_report.gather(conn, _summary(settings, run_id), run_status="SUCCEEDED")

    lines = document.lines

    assert [line.key for line in lines if not line.meaning.strip() or not line.label.strip()] == []
    assert {line.key: line.label for line in lines if "ADMIN_GRANT" in line.key} == {
        "issued.ADMIN_GRANT": "Grants", "spent.ADMIN_GRANT": "Adjustments (negative grants)"}
    assert not any(line.label.startswith(("Spent:", "Issued:")) or "_" in line.label for line in lines)
    by_key = {line.key: line for line in lines}
    assert by_key["issued.REFERRAL_RECURRING"].meaning == (
        "points earned by referrers on their referred users' monthly payments")
    assert by_key["issued.REFERRAL_RECURRING"].code == "REFERRAL_RECURRING"
    assert all(line.value <= 0 for line in lines if line.role == "used")
    assert by_key["used_total"].value == sum(line.value for line in lines if line.role == "used")
    assert by_key["closing"].money == usd(by_key["closing"].value) and by_key["spent.ADMIN_GRANT"].money == "-0.40"
    assert document.previous is not None and by_key["opening"].value == by_key["closing"].previous
    assert "days" in document.covers and "run" in document.covers


def test_the_workbook_holds_numbers_dates_and_formulas_that_evaluate_to_the_summary(engine, settings):
    from openpyxl import load_workbook

    first, run_id = _reconcile_with_a_previous_one(engine, settings)
    summary = _summary(settings, run_id)
    path = _paths(settings, run_id).xlsx

    book = load_workbook(path)
    values = evaluated(path)

    assert book.sheetnames[:5] == ["Summary", "Roll-forward", "Discrepancies", "Monthly", "Findings"]
    assert ("Schedule" in book.sheetnames) == bool(summary.get("liability_schedule"))
    assert ("Journal" in book.sheetnames) == bool(summary.get("journal"))
    for sheet in book.worksheets:
        assert (sheet["A2"].value, sheet["C2"].value, sheet["D2"].value, sheet["F2"].value) == (
            "As of", "Run", run_id, 100)
        assert sheet["B2"].value == datetime(2026, 6, 1, 1) and sheet["B2"].is_date  # a date cell, not text
    items = {row[0]: row[1] for row in book["Summary"].iter_rows(min_row=5, values_only=True)}
    assert items["Outstanding liability (points)"] == summary["outstanding_points"]
    assert Decimal(str(items["Outstanding liability (US$)"])) == Decimal(summary["outstanding_money"]["usd"])
    assert items["Discrepant users"] == summary["discrepancies"]["total"]
    assert items["Net drift (cache - ledger)"] == summary["net_drift"]
    previous = json.loads(ReportFiles.for_run(settings.reports_dir, utc(2026, 3, 15), first).json.read_text())
    check_roll_forward_sheet(book["Roll-forward"], values, summary, previous["roll_forward"])
    discrepancies = book["Discrepancies"]
    assert discrepancies.freeze_panes == "A5" and discrepancies.auto_filter.ref.startswith("A4:I")
    rows = list(discrepancies.iter_rows(min_row=5, values_only=True))
    csv_rows = _paths(settings, run_id).csv.read_text().splitlines()[1:]
    assert [",".join("" if cell is None else str(cell) for cell in row) for row in rows] == csv_rows
    assert all(isinstance(row[4], int) for row in rows)
    monthly = list(book["Monthly"].iter_rows(min_row=5))
    assert [row[0].value for row in monthly[:-1]] == [datetime.strptime(m["month"], "%Y-%m") for m in summary["monthly"]]
    assert all(row[0].is_date and row[0].number_format == "yyyy-mm" for row in monthly[:-1])
    for row, month in zip(monthly, summary["monthly"]):
        signed = [month["issued"], -month["spent"], -month["expired"], -month["clawed_back"]]
        assert [cell.value for cell in row[1:5]] == signed
        assert row[5].value.startswith("=SUM(") and values[("MONTHLY", row[5].coordinate)] == sum(signed)
    total = monthly[-1]
    assert total[0].value == "total" and values[("MONTHLY", total[1].coordinate)] == sum(
        m["issued"] for m in summary["monthly"])


def test_the_four_formats_agree_line_for_line(engine, settings):
    """The roll-forward's lines as the JSON holds them (signed as the contract reads), the HTML shows them,
    the workbook computes them and the terminal's table prints them: the same number, line by line."""
    from openpyxl import load_workbook

    from cli.report import report_table
    from jobs.reports import stored as stored_reports
    from tests.finance_documents import line_points

    _, run_id = _reconcile_with_a_previous_one(engine, settings)
    summary = _summary(settings, run_id)
    paths = _paths(settings, run_id)
    with engine.connect() as conn:
        stored = stored_reports.find(conn, run_id)
        document = stored_reports.document(conn, stored)
        table = report_table(stored, stored_reports.discrepancies(conn, run_id), document=document, width=200)
    html = paths.html.read_text()
    sheet = load_workbook(paths.xlsx)["Roll-forward"]
    computed = evaluated(paths.xlsx)
    in_json = line_points(summary["roll_forward"])

    compared = [line for line in document.lines if line.key in in_json]
    assert len(compared) >= 12
    for line in compared:
        row = re.search(rf'<tr class="[^"]*" data-line="{re.escape(line.key)}">.*?data-value="(-?\d+)"', html, re.S)
        cell = next(r[1] for r in sheet.iter_rows(min_row=5) if r[0].value == line.label
                    and (line.code == "" or r[6].value == line.code))
        printed = next(text for text in table.splitlines() if text.startswith(line.label + " "))
        number = printed[len(line.label):].split()[0].replace(",", "")
        assert int(row.group(1)) == computed[("ROLL-FORWARD", cell.coordinate)] == int(number) == in_json[line.key], (
            line.key)
    assert in_json["closing"] == summary["outstanding_points"]


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
