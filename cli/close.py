"""A period document (`close YYYY-MM`, `report --period YYYY-MM`) as text a terminal reads. Its
roll-forward, restatements and schedule are drawn by `cli/report.py`'s sections from the document's lines
(`jobs/reports/document.py`), so the words, signs and money are those of the HTML, the workbook and the
reconcile's table; this module adds the close's own header, journal and digest."""
from __future__ import annotations

from collections.abc import Mapping

from cli.report import Text, restatements_section, roll_forward_section, schedule_section, signed_usd, usd
from core.clock import when
from jobs import journal
from jobs.reports.finance import period_report


def close_table(document: Mapping[str, object], *, width: int = 80) -> str:
    """The whole document as text, at most `width` wide (sentences wrapped, tables fitted)."""
    report = period_report(document)
    summary = report.summary
    out = Text(width)
    out.para(f"Period close {summary['period']}: {summary['status']} (from {when(summary['from'])} "
             f"to before {when(summary['to'])})")
    if summary.get("signed_by"):
        out.para(f"Signed off by {summary['signed_by']} at {when(summary['signed_at'])}")
    money = summary.get("outstanding_money")
    out.para(f"Outstanding liability at {when(summary['to'])}: {summary['outstanding_points']:,} points"
             + (f" = {usd(money['usd'])}" if money else ""))
    out.blank()
    roll_forward_section(out, report)
    _journal(out, summary.get("journal") or [], summary.get("journal_file"))
    schedule_section(out, report, with_journal=False)
    restatements_section(out, summary, none_signed="Restatements: no month was signed off before this one.")
    digest = summary["digest"]
    out.para(f"Digest of the month's ledger rows: {digest['rows']:,} row(s), {digest['points']:+,} points, "
             f"hash {digest['hash']}")
    return out.text()


def _journal(out: Text, lines: list[journal.JournalLine], file: str | None) -> None:
    totals = journal.totals(lines)
    where = f" ({file})" if file else ""
    out.para(f"Journal{where}: {len(lines)} lines, debits {usd(str(totals['debit']))} = credits "
             f"{usd(str(totals['credit']))}; the points liability moves {signed_usd(str(totals['liability_net']))}")
    out.blank()
