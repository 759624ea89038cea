"""The finance report's charts (jobs/reports/charts.py, pygal): static SVG to inline in the HTML, with no
script, no request to any host, fixed and distinct ids, the same SVG for the same document: no database."""
from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from jobs.reports import charts
from jobs.reports.document import Document, ReconcilePoint
from tests.builders import utc

REPO = Path(__file__).resolve().parents[2]
AS_OF = utc(2026, 6, 1, 1)
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
MINUS = "\u2212"


def document(reconciles: int = 20) -> Document:
    """Weekly reconciles up to AS_OF (drift every fifth one) and twelve months of movements."""
    history = [ReconcilePoint(run_id=100 + n, as_of=AS_OF - timedelta(weeks=reconciles - 1 - n),
                              liability=1_200_000 + 35_000 * n, net_drift=-1_500 if n % 5 == 0 else 240 * (n % 4),
                              discrepancies=(7 * n) % 23) for n in range(reconciles)]
    months = [f"{2025 + (6 + k) // 12}-{(6 + k) % 12 + 1:02d}" for k in range(12)]  # 2025-07 … 2026-06
    monthly = [{"month": month, "issued": 180_000 + 9_000 * k, "spent": 120_000 + 4_000 * k,
                "expired": 15_000 * (k % 3), "clawed_back": 2_500 * (k % 4)} for k, month in enumerate(months)]
    summary = {"run_id": history[-1].run_id, "as_of": AS_OF.isoformat(), "monthly": monthly}
    return Document(summary=summary, run_status="SUCCEEDED", largest=[], history=history)


@pytest.fixture(scope="module")
def drawn() -> dict[str, str]:
    return charts.all_charts(document())


def test_every_chart_is_one_static_svg_element_to_inline(drawn):
    assert list(drawn) == ["liability", "monthly", "drift"]
    for name, svg in drawn.items():
        assert svg.startswith("<svg ") and svg.endswith("</svg>"), name
        assert "<?xml" not in svg and "<!DOCTYPE" not in svg and "<!--" not in svg, name
        assert "<script" not in svg and "javascript" not in svg.lower(), name
        assert 'viewBox="0 0 ' in svg and not re.match(r"<svg[^>]* (width|height)=", svg), name  # the page sizes it


def test_no_chart_refers_to_any_other_host(drawn):
    for name, svg in drawn.items():
        assert set(re.findall(r"https?://[^\"'\s<>)]*", svg)) <= NAMESPACES, name
        assert re.findall(r"(?<!xmlns=\")(?<!xmlns:xlink=\")https?:", svg) == [], name
        assert "href" not in svg and "url(" not in svg and "@import" not in svg, name


def test_the_ids_are_fixed_by_chart_and_distinct_across_the_page(drawn):
    ids = [found for svg in drawn.values() for found in re.findall(r'\sid="([^"]+)"', svg)]

    assert ids == ["chart-finance-liability", "chart-finance-monthly", "chart-finance-drift",
                   "chart-finance-drift-net", "chart-finance-drift-count"]
    for svg in drawn.values():  # pygal's CSS is scoped by the chart's id: no rule reaches another chart
        css = "".join(re.findall(r"<style[^>]*>(.*?)</style>", svg, re.S))
        assert set(re.findall(r"#(chart-[\w-]+)", css)) <= set(re.findall(r'\sid="([^"]+)"', svg))


def test_the_same_document_draws_the_same_svg():
    assert charts.all_charts(document()) == charts.all_charts(document())


def test_the_liability_chart_has_a_month_axis_and_the_liability_of_each_reconcile(drawn):
    svg = drawn["liability"]

    labels = _texts(svg)
    assert {"Jul", "Dec", "Jan \u201926", "May", "Jun"} <= labels and "points" in labels
    assert "1,600,000" in labels  # thousands separators on the y axis
    assert "2026-06-01 01:00 UTC, run 119: 1,865,000" in svg  # every point keeps its value, as a tooltip
    assert charts.COLOURS["issued"] in svg


def test_the_monthly_chart_has_every_month_every_series_and_their_colours(drawn):
    svg = drawn["monthly"]

    labels = _texts(svg)
    assert {"Jul", "Dec", "Jan \u201926", "Jun", "issued", "spent", "expired", "clawed back"} <= labels
    assert "240,000" in labels
    assert "2026-06 issued: 279,000" in svg and f"2025-09 clawed back: {MINUS}5,000" in svg  # signed as the tables
    assert f"{MINUS}80,000" in labels  # what was used up stands below the axis
    for colour in charts.COLOURS.values():
        assert colour in svg


def test_the_drift_chart_stacks_net_drift_over_the_discrepancy_count_on_one_aligned_x_axis(drawn):
    svg = drawn["drift"]

    labels = _texts(svg)
    assert {"net drift", "discrepancies", "May 25", "0"} <= labels
    assert f"{MINUS}1,200" in labels  # a negative drift on the axis, with a minus sign
    assert f"2026-05-04 01:00 UTC, run 115: {MINUS}1,500" in svg and "2026-06-01 01:00 UTC, run 119: 18" in svg
    net, count = re.findall(r'translate\(([\d.]+), [\d.]+\)" class="plot"', svg)
    assert net == count  # the bars stand over the dots of the same reconciles


def test_a_first_run_with_one_clean_reconcile_and_no_monthly_lines_still_draws(drawn):
    first = document(reconciles=1)
    first.history[0] = ReconcilePoint(1, AS_OF, 5_000, 0, 0)
    first.summary.pop("monthly")

    drawn = charts.all_charts(first)

    assert all(svg.startswith("<svg ") for svg in drawn.values())
    assert "No data" in _texts(drawn["monthly"])
    assert {"0", "1"} == {label for label in _texts(drawn["drift"]) if re.fullmatch(r"[\d.,]+", label)}


def test_importing_the_charts_does_not_import_pygal():
    code = "import sys, jobs.reports.charts; print('pygal' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


def _texts(svg: str) -> set[str]:
    return set(re.findall(r"<text[^>]*>([^<]+)</text>", svg))


def test_the_warm_up_imports_the_report_libraries_and_compiles_the_template():
    """reconcile runs it in a thread while the server reads the ledger; a fresh interpreter shows what
    it loaded."""
    code = ("import sys; from jobs.reports import finance; finance.warm_up();"
            " print('openpyxl' in sys.modules, 'pygal' in sys.modules,"
            " finance.TEMPLATE in str(finance._environment().cache.keys()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["True", "True", "True"]
