"""`report --period YYYY-MM`: a signed-off month rendered exactly as it was signed, from the document
stored with its sign-off (migration 026): `json` is that document's text byte for byte, `table` the
close's table of it, `csv` its journal, `html` and `xlsx` the finance report's renderers of it
(jobs/reports/finance.py `period_report`). Nothing is read from the ledger: a restated month still
renders as signed (the restatements are in every later reconcile's report)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

from sqlalchemy import Engine

from cli.close import close_table
from cli.terminal import stdout_console
from core.reports import write_text_atomically
from jobs.journal import journal_csv
from jobs.period_close import stored_document


def render_period(engine: Engine, period: date, fmt: str, output: Path | None) -> bool | None:
    """Write the month's report in `fmt` to `output` (whole) or stdout; None when it is not signed off."""
    with engine.connect() as conn:
        text = stored_document(conn, period)
    if text is None:
        return None
    if fmt == "xlsx":
        _write_xlsx(text, output)
        return True
    rendered = _render_text(text, fmt)
    if output is not None:
        write_text_atomically(output, rendered)
    else:
        sys.stdout.write(rendered)
        sys.stdout.flush()
    return True


def _render_text(text: str, fmt: str) -> str:
    if fmt == "json":
        return text
    document = json.loads(text)
    if fmt == "table":
        return close_table(document, width=stdout_console().width)
    if fmt == "csv":
        return journal_csv(document["journal"])
    from jobs.reports import finance

    return finance.render_html(finance.period_report(document))


def _write_xlsx(text: str, output: Path | None) -> None:
    from jobs.reports import finance

    document = finance.period_report(json.loads(text))
    with tempfile.TemporaryDirectory(dir=output.parent if output else None, prefix=".report-") as scratch:
        aside = Path(scratch) / "report.xlsx"
        finance.write_xlsx(None, document, aside)
        if output is not None:
            os.replace(aside, output)
        else:
            sys.stdout.buffer.write(aside.read_bytes())
            sys.stdout.flush()
