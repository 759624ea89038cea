"""Files that appear whole: written aside, then renamed into place; a crash or a full disk leaves the
old file (or none) and no part file, and names the file."""
from __future__ import annotations

import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from core.reports import atomic_text_file

REPO = Path(__file__).resolve().parents[2]


def test_an_atomic_file_keeps_its_old_content_until_the_new_one_is_complete(tmp_path: Path):
    target = tmp_path / "report.csv"
    target.write_text("old\n")

    with pytest.raises(RuntimeError):
        with atomic_text_file(target) as out:
            out.write("half of the new")
            assert target.read_text() == "old\n"
            raise RuntimeError("crash")

    assert target.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["report.csv"]
    with atomic_text_file(target) as out:
        out.write("new\n")
    assert target.read_text() == "new\n"


def test_a_full_disk_names_the_file(tmp_path):
    target = tmp_path / "report.json"
    code = ("import resource, sys; from pathlib import Path; from core.reports import write_text_atomically\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))\n"
            "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"write_text_atomically(Path({str(target)!r}), 'x' * 100000)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 1
    assert str(target) in done.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # nothing under the final name, no .part left behind


def _imports_of(path: Path) -> set[str]:
    """The modules `path` imports, also inside functions (`from jobs.reports import charts` names charts)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_the_report_modules_import_one_another_without_a_circle():
    folder = REPO / "jobs" / "reports"
    modules = {f"jobs.reports.{path.stem}": path for path in folder.glob("*.py") if path.stem != "__init__"}
    edges = {name: _imports_of(path) & modules.keys() - {name} for name, path in modules.items()}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step}))
                   for step in edges[start])

    assert [name for name in modules if reaches(name, name)] == []


# ── the controller's document (jobs/reports/document.py, finance.py, xlsx.py): no database ────────────

def _period_report(**changes):
    from jobs.reports import finance
    from tests.finance_documents import period_document

    return finance.period_report({**period_document(), **changes})


def test_every_roll_forward_line_says_in_words_what_it_is_whatever_its_ledger_type():
    from jobs.reports.document import roll_forward_lines
    from tests.finance_documents import roll_forward

    kinds = ("REFERRAL_RECURRING", "REFERRAL_L2", "REFERRAL_FIRST_PAYMENT", "REFERRAL_WELCOME", "ADMIN_GRANT",
             "SOMETHING_NEW")
    roll = roll_forward(100, {kind: 10 for kind in kinds}, {"ADMIN_GRANT": 3, "REDEMPTION_QUOTA": 4,
                                                           "REDEMPTION_GIFT_CARD": 5, "ODD_DEBIT": 1}, 2, 1, 1,
                        "2026-05-01T00:00:00+00:00")
    roll["late_by_type"] = {"REFERRAL_RECURRING": 7, "ADMIN_GRANT": -2, "EXPIRY": -1}

    lines = roll_forward_lines(roll, previous=roll)

    assert [line.key for line in lines if not line.meaning.strip() or not line.label.strip()] == []
    assert [line.label for line in lines if "_" in line.label or line.label.startswith(("Spent:", "Issued:"))] == []
    labels = {line.key: line.label for line in lines}
    assert (labels["issued.ADMIN_GRANT"], labels["spent.ADMIN_GRANT"]) == ("Grants", "Adjustments (negative grants)")
    assert labels["spent.REDEMPTION_GIFT_CARD"] == "Redeemed for gift card"
    assert labels["late.ADMIN_GRANT"].startswith("Late: adjustments") and labels["late.EXPIRY"] == "Late: expired"
    assert len({line.meaning for line in lines}) == len(lines)  # no two lines explained alike
    assert {line.code for line in lines if line.key.startswith("issued.")} == set(kinds)


def test_the_lines_are_signed_as_they_move_the_liability_with_subtotals_money_and_the_previous_period():
    report = _period_report()
    roll, april = report.summary["roll_forward"], report.summary["previous"]["roll_forward"]

    lines = {line.key: line for line in report.lines}

    assert all(line.value > 0 for key, line in lines.items() if key.startswith("issued.") and key in
               {f"issued.{kind}" for kind in roll["issued"]})
    assert [key for key, line in lines.items() if line.role == "used" and line.value > 0] == []
    assert lines["issued_total"].value == roll["issued_total"] == 106_965
    assert lines["used_total"].value == -(roll["spent_total"] + roll["expired"] + roll["clawed_back"]
                                          + roll["recovered"]) == -75_000
    assert lines["opening"].value + lines["issued_total"].value + lines["used_total"].value == lines["closing"].value
    assert (lines["spent.ADMIN_GRANT"].money, lines["closing"].money) == ("-12.50", "12819.65")
    assert lines["issued.REFERRAL_FIRST_PAYMENT"].value == 0 and lines["issued.REFERRAL_FIRST_PAYMENT"].previous == 9_000
    assert lines["closing"].previous == april["closing"] == lines["opening"].value
    assert lines["used_total"].previous == -(24_900 + 8_000 + 1_900 + 100)
    assert report.covers.startswith("May 2026: rows dated from 2026-05-01 00:00:00 UTC")


def test_a_reconcile_that_is_the_first_says_its_roll_forward_covers_the_whole_ledger():
    from jobs.reports.document import Document
    from tests.finance_documents import roll_forward

    roll = roll_forward(0, {"REFERRAL_RECURRING": 5}, {}, 0, 0, 0, None)
    document = Document(summary={"report": "points reconciliation", "run_id": 1, "as_of": "2026-06-01T00:00:00+00:00",
                                 "roll_forward": roll, "outstanding_money": None}, run_status=None, largest=[])

    assert "the whole ledger up to 2026-06-01 00:00:00 UTC" in document.covers and "years" in document.covers
    assert [line.money for line in document.lines] == [None] * len(document.lines)  # no price: no money
    assert "late" not in {line.key for line in document.lines}  # nothing can be late before the first


def test_the_period_html_shows_every_number_of_the_document_in_one_sign_convention():
    from jobs.reports import finance
    from tests.finance_documents import period_document
    from tests.finance_documents import check_every_number

    document = period_document()
    html = finance.render_html(finance.period_report(document))

    shown = check_every_number(html, document, document["previous"]["roll_forward"])
    assert shown["roll_forward.spent.REDEMPTION_QUOTA"] == "-61877" and shown["roll_forward.expired"] == "-9433"
    assert shown["restatements.2026-03.clawed_back.change"] == "-130"
    assert "Period close: May 2026" in html and "Dana Controller" in html
    debits = sum(Decimal(line["debit"]) for line in document["journal"])
    assert debits == sum(Decimal(line["credit"]) for line in document["journal"]) == Decimal("1819.65")
    assert f'id="journal-debits" data-value="{debits}"' in html and f'id="journal-credits" data-value="{debits}"' in html
    assert "Discrepan" not in html and "<script" not in html  # a month's document: no cache comparison


def test_a_period_without_restatements_or_with_a_gap_says_so():
    from jobs.reports import finance
    from tests.finance_documents import period_document, with_gap

    quiet = finance.render_html(finance.period_report(period_document(restated=False)))
    gap = finance.render_html(finance.period_report(with_gap(period_document(), 25)))

    assert 'id="restatements-none"' in quiet and 'data-key="restatements.months_checked" data-value="2"' in quiet
    assert "Identity gap of +25 points" in gap and 'data-key="roll_forward.gap" data-value="25"' in gap


@pytest.mark.parametrize("gap", [0, -7], ids=["identity holds", "with a gap"])
def test_the_period_workbook_computes_its_closing_schedule_and_journal_by_formulas(tmp_path, gap):
    from openpyxl import load_workbook

    from jobs.reports import finance
    from tests.finance_documents import period_document, with_gap
    from tests.finance_documents import check_roll_forward_sheet, evaluated

    document = with_gap(period_document(), gap) if gap else period_document()
    path = tmp_path / "close.xlsx"
    finance.write_xlsx(None, finance.period_report(document), path)

    book = load_workbook(path)
    values = evaluated(path)

    assert book.sheetnames == ["Summary", "Roll-forward", "Restatements", "Schedule", "Journal"]
    for sheet in book.worksheets:
        assert sheet["B2"].is_date and sheet["D2"].is_date and sheet["D2"].number_format == "yyyy-mm"
        assert (sheet["C2"].value, sheet["D2"].value.strftime("%Y-%m")) == ("Period", "2026-05")
    check_roll_forward_sheet(book["Roll-forward"], values, document, document["previous"]["roll_forward"])
    schedule = {row[0].value: row for row in book["Schedule"].iter_rows(min_row=5) if row[0].value}
    assert values[("SCHEDULE", schedule["total"][1].coordinate)] == document["liability_schedule"]["outstanding_points"]
    assert values[("SCHEDULE", schedule["total less outstanding (0: every point is scheduled)"][1].coordinate)] == 0
    assert abs(values[("SCHEDULE", schedule["breakage rate (expired ÷ issued)"][1].coordinate)] - 0.0808) < 5e-5
    journal = {row[0].value: row for row in book["Journal"].iter_rows(min_row=5) if isinstance(row[0].value, str)}
    assert values[("JOURNAL", journal["debits less credits (0: balanced)"][2].coordinate)] == 0
    assert f'{values[("JOURNAL", journal["total"][2].coordinate)]:.2f}' == str(
        sum(Decimal(line["debit"]) for line in document["journal"]))
    restated = [row for row in book["Restatements"].iter_rows(min_row=5) if row[4].value]
    assert [values[("RESTATEMENTS", row[7].coordinate)] for row in restated] == [450, -130]
    assert all(row[0].is_date and row[2].is_date for row in restated)
    summary = {row[0].value: row[1].value for row in book["Summary"].iter_rows(min_row=5)}
    assert summary["Signed off at"] == datetime(2026, 6, 3, 9, 12, 44) and summary["Status"] == "SIGNED"
