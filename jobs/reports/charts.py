"""The finance report's charts, drawn by pygal and returned as `<svg>` text to inline in the HTML.

pygal draws static SVG and adds what its interactive mode needs; that is taken out again (its
`<script>`, the `<desc>` data the script reads, and comments naming its web site and today's date), so a
chart needs nothing but the page: text stays text, no script, no request to any host. Every chart has a fixed id,
`chart-finance-<name>`: pygal scopes a chart's CSS by its id, so the charts of one page do not restyle
each other, and the same document draws the same SVG byte for byte. pygal is imported when a chart is
drawn, not with this module. The SVGs have a viewBox and no size: the page's CSS scales them."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable

from jobs.reconcile_summary import MONTHS_CHARTED, month_starts
from jobs.reports.document import MINUS, Document, ReconcilePoint, monthly_rows, months_before

INK, GRID = "#1f2933", "#d9dee3"
COLOURS = {"issued": "#2f6f9f", "spent": "#d08c2b", "expired": "#7b8794", "clawed_back": "#b03a2e"}
WIDTH = 640  # SVG units; the page scales a chart to its column (a 13-unit font is ≈7.5 px on a 390 px phone)
FONT = '-apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif'
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# One look for every chart: pygal's Style (colours and fonts) and chart options.
# pygal ships no type information: its charts and SVG elements are what the library makes of them.
PygalChart = Any
SvgElement = Any

STYLE: dict[str, str | int] = {
    "background": "transparent", "plot_background": "transparent", "foreground": INK,
    "foreground_strong": INK, "foreground_subtle": GRID, "guide_stroke_color": GRID,
    "major_guide_stroke_color": GRID, "guide_stroke_dasharray": "none", "major_guide_stroke_dasharray": "none",
    "font_family": FONT, "label_font_size": 13, "major_label_font_size": 13, "legend_font_size": 13,
    "title_font_size": 13, "no_data_font_size": 16, "opacity": ".9", "opacity_hover": ".9",
    "stroke_opacity": "1", "stroke_opacity_hover": "1", "stroke_width": "2", "stroke_width_hover": "2",
    "transition": "0s",
}
MARGIN = 12
OPTIONS: dict[str, object] = {
    "width": WIDTH, "margin": MARGIN, "spacing": 8, "show_legend": False, "truncate_label": -1,
    "truncate_legend": -1, "js": [], "disable_xml_declaration": True, "explicit_size": False,
    "no_data_text": "No data", "show_x_guides": False, "show_y_guides": True, "max_scale": 7,
    "order_min": 0,  # whole points: no y label between two integers
}


def all_charts(document: Document) -> dict[str, str]:
    return {"liability": liability_chart(document), "monthly": monthly_chart(document),
            "drift": drift_chart(document)}


def liability_chart(document: Document) -> str:
    """Outstanding liability (points) at each successful reconcile of the last 12 months, on a time
    axis of the whole 12 months up to the as-of (one label a month), so one point is not a lonely dot."""
    points = document.last_12_months
    first = months_before(document.as_of, MONTHS_CHARTED)
    chart = _chart("XY", "liability", [COLOURS["issued"]] * 2, height=260, y_title="points", include_x_axis=True,
                   dots_size=3, opacity=".08", css=_css("liability", ".serie-0 .line { stroke: none }"),
                   xrange=(first.timestamp(), (document.as_of + timedelta(days=3)).timestamp()),
                   x_labels=[{"value": month.timestamp(), "label": _month_label(month)}
                             for month in month_starts(_month_of(first))[1:]])
    values = [{"value": (p.as_of.timestamp(), p.liability), "tooltip": _about(p, p.liability)} for p in points]
    chart.add("area", values, fill=True, show_dots=False)  # under the line; the css rule above hides its edges
    chart.add("liability", values, show_dots=len(points) < 40)
    return _svg(chart, "Outstanding liability in points at each reconcile, last 12 months")


def monthly_chart(document: Document) -> str:
    """Points issued, spent, expired and clawed back per calendar month (grouped bars), signed as the
    tables sign them: issued above the axis, what was used up below it."""
    monthly = monthly_rows(document.summary.get("monthly", []))
    chart = _chart("Bar", "monthly", COLOURS.values(), height=290, y_title="points", show_legend=True,
                   legend_at_bottom=True, legend_at_bottom_columns=len(COLOURS),
                   x_labels=[_month_label(datetime.strptime(str(m["month"]), "%Y-%m")) for m in monthly])
    for key in COLOURS:
        name = key.replace("_", " ")
        chart.add(name, [{"value": m[key], "tooltip": f"{m['month']} {name}: {_number(int(m[key]))}"}
                         for m in monthly])
    return _svg(chart, "Points issued (+), spent, expired and clawed back (−) per month")


def drift_chart(document: Document) -> str:
    """Net drift (cache minus ledger) and discrepancy count at each of the last 30 reconciles: two charts
    on one x axis, stacked in one SVG (the two series have scales of their own)."""
    points = document.last_30
    step = max(1, len(points) // 6)
    labels = [{"value": n + 0.5, "label": f"{p.as_of:%b %d}"} for n, p in enumerate(points)][::step]
    net = _chart("Bar", "drift-net", [COLOURS["clawed_back"]], height=170, y_title="net drift",
                 show_x_labels=False)
    net.add("net drift", [{"value": p.net_drift, "color": COLOURS["clawed_back"] if p.net_drift else GRID,
                           "tooltip": _about(p, p.net_drift)} for p in points])
    count = _chart("XY", "drift-count", [COLOURS["spent"]], height=190, y_title="discrepancies",
                   include_x_axis=True, dots_size=3, xrange=(0, len(points)), x_labels=labels)
    count.add("discrepancies", [{"value": (n + 0.5, p.discrepancies), "tooltip": _about(p, p.discrepancies)}
                                for n, p in enumerate(points)])
    return _stacked("drift", "Net drift and discrepancy count at each of the last 30 reconciles", net, count)


# ── pygal ────────────────────────────────────────────────────────────────────

def _chart(kind: str, name: str, colours: Iterable[str], opacity: str = ".9",
           **options: object) -> PygalChart:
    """A pygal chart of the shared look with its series' colours (and `opacity` of their bars or areas),
    and its fixed id `chart-finance-<name>`."""
    import pygal
    from pygal.style import Style

    style = Style(**{**STYLE, "colors": tuple(colours), "opacity": opacity})
    chart = getattr(pygal, kind)(style=style, value_formatter=_number, **{**OPTIONS, **options})
    chart.uuid = f"finance-{name}"  # pygal's default is a random uuid4
    return chart


def _svg(chart: PygalChart, title: str, **placed: float) -> str:
    """The chart's `<svg>` without what pygal adds for its script (the script, the data it reads from
    `<desc>` elements, ids of the legend's entries) and without comments, titled for a screen reader;
    `placed` (y, height) places it inside another SVG. A point's `tooltip` stays: a `<title>`."""
    def static(root: SvgElement) -> SvgElement:
        from pygal.etree import etree

        for parent in list(root.iter()):
            for child in list(parent):
                if child.tag in ("script", "desc") or child.tag is etree.Comment:
                    parent.remove(child)
            if parent is not root:
                parent.attrib.pop("id", None)
        root.find("title").text = title
        for attribute, value in placed.items():
            root.set(attribute, f"{value:g}")
        return root

    chart.add_xml_filter(static)
    return str(chart.render(is_unicode=True))


def _stacked(name: str, title: str, top: PygalChart, bottom: PygalChart) -> str:
    """Two charts one above the other in one SVG, their plots aligned: pygal makes room for a chart's
    y labels left of its plot, so the chart with the narrower labels gets a wider left margin."""
    lefts = [_plot_left(chart) for chart in (top, bottom)]
    for chart, left in zip((top, bottom), lefts):
        chart.config.margin_left = MARGIN + max(lefts) - left
    height = top.config.height
    inner = _svg(top, title, y=0, height=height) + _svg(bottom, title, y=height, height=bottom.config.height)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-finance-{name}" class="pygal-chart" '
            f'viewBox="0 0 {WIDTH} {height + bottom.config.height}"><title>{title}</title>{inner}</svg>')


def _plot_left(chart: PygalChart) -> float:
    """Where pygal puts the left edge of the chart's plot (it lays the whole chart out to know)."""
    chart.setup()
    try:
        return float(chart.margin_box.left)
    finally:
        chart.teardown()


def _css(name: str, rule: str) -> tuple[str, ...]:
    """pygal's own CSS files and one rule more, scoped to the chart like theirs."""
    return "file://style.css", "file://graph.css", f"inline:#chart-finance-{name} {rule}"


# ── labels ───────────────────────────────────────────────────────────────────

def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}".replace("-", MINUS)


def _about(point: ReconcilePoint, value: int) -> str:
    return f"{point.as_of:%Y-%m-%d %H:%M} UTC, run {point.run_id}: {_number(value)}"


def _month_of(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _month_label(month: datetime) -> str:
    """`Feb`; January with its year, `Jan ’26`."""
    name = MONTH_NAMES[month.month - 1]
    return f"{name} \u2019{month.year % 100:02d}" if month.month == 1 else name
