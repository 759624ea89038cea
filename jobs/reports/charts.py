"""The finance report's charts, drawn by matplotlib's SVG backend (no pyplot, no display) and returned
as `<svg>` text to inline in the HTML: text stays text (`svg.fonttype: none`), ids are stable."""
from __future__ import annotations

import io
from typing import Any

from jobs.reports.finance import Document

INK, GRID = "#1f2933", "#d9dee3"
COLOURS = {"issued": "#2f6f9f", "spent": "#d08c2b", "expired": "#7b8794", "clawed_back": "#b03a2e"}
_STYLE = {
    "svg.fonttype": "none", "svg.hashsalt": "rewards-finance-report", "font.family": "sans-serif",
    "font.size": 8.5, "axes.edgecolor": GRID, "axes.labelcolor": INK, "xtick.color": INK, "ytick.color": INK,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.grid.axis": "y",
    "grid.color": GRID, "grid.linewidth": 0.6, "legend.frameon": False,
}


def all_charts(document: Document) -> dict[str, str]:
    return {"liability": liability_chart(document), "monthly": monthly_chart(document),
            "drift": drift_chart(document)}


def _figure(height: float = 2.5, rows: int = 1) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, height), layout="constrained")
    return figure, figure.subplots(rows, 1, sharex=True) if rows > 1 else figure.subplots()


def _svg(figure: Any) -> str:
    import matplotlib

    out = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = out.getvalue()
    return text[text.index("<svg"):]  # the XML prolog and DOCTYPE do not belong inside HTML


def _thousands(axis: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))


def _styled(draw: Any) -> Any:
    def wrapper(document: Document) -> str:
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return _svg(draw(document))
    wrapper.__name__ = draw.__name__
    return wrapper


@_styled
def liability_chart(document: Document) -> Any:
    """Outstanding liability (points) at each successful reconcile of the last 12 months."""
    points = document.last_12_months
    figure, axes = _figure()
    axes.plot([p.as_of for p in points], [p.liability for p in points], color=COLOURS["issued"],
              marker="o" if len(points) < 40 else None, markersize=3, linewidth=1.6)
    axes.fill_between([p.as_of for p in points], [p.liability for p in points], color=COLOURS["issued"],
                      alpha=0.08)
    axes.set_ylabel("points")
    axes.set_ylim(bottom=0)
    _thousands(axes.yaxis)
    _month_axis(axes, document)
    return figure


@_styled
def monthly_chart(document: Document) -> Any:
    """Points issued, spent, expired and clawed back per calendar month (grouped bars)."""
    monthly = document.summary.get("monthly", [])
    figure, axes = _figure(height=2.7)
    width = 0.2
    for offset, key in enumerate(COLOURS):
        axes.bar([n + (offset - 1.5) * width for n in range(len(monthly))], [m[key] for m in monthly],
                 width=width, color=COLOURS[key], label=key.replace("_", " "))
    axes.set_xticks(range(len(monthly)), [_month_label(m["month"]) for m in monthly])
    axes.set_ylabel("points")
    _thousands(axes.yaxis)
    axes.legend(ncols=4, loc="upper left", bbox_to_anchor=(0, 1.16), fontsize=8)
    return figure


@_styled
def drift_chart(document: Document) -> Any:
    """Net drift (cache minus ledger) and discrepancy count at each of the last 30 reconciles."""
    points = document.last_30
    figure, (drift, count) = _figure(height=3.0, rows=2)
    labels = list(range(len(points)))
    drift.bar(labels, [p.net_drift for p in points],
              color=[COLOURS["clawed_back"] if p.net_drift else GRID for p in points])
    drift.axhline(0, color=INK, linewidth=0.6)
    drift.set_ylabel("net drift (points)")
    _thousands(drift.yaxis)
    count.plot(labels, [p.discrepancies for p in points], color=COLOURS["spent"], marker="o", markersize=3)
    count.set_ylabel("discrepancies")
    count.set_ylim(bottom=0)
    _thousands(count.yaxis)
    step = max(1, len(points) // 8)
    count.set_xticks(labels[::step], [f"{p.as_of:%b %d}\nrun {p.run_id}" for p in points][::step])
    return figure


def _month_axis(axes: Any, document: Document) -> None:
    """Always the whole 12 months up to the as-of, one tick a month, so one point is not a lonely dot."""
    from datetime import timedelta

    from matplotlib.dates import ConciseDateFormatter, MonthLocator

    from jobs.reports.finance import MONTHS_CHARTED, _months_before

    locator = MonthLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes.set_xlim(_months_before(document.as_of, MONTHS_CHARTED), document.as_of + timedelta(days=3))


def _month_label(month: str) -> str:
    year, number = month.split("-")
    names = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return f"{names[int(number) - 1]}\n{year}" if number in ("01", "1") else names[int(number) - 1]
