"""A stored reconciliation report in a file format again (`python scheduler.py report`): the CSV and
the JSON summary as their files hold them, the HTML and the workbook rendered from the run's stored
summary and tables. The terminal's table is the face's (`cli/report.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol, cast

from sqlalchemy import Connection

from core.sql import Queries
from jobs.reconcile import JOB
from jobs.reports import finance
from jobs.reports.document import DiscrepancyRow, Document, ReportData
from jobs.reports.files import csv_text, summary_json

_queries = Queries(__file__)

FILE_FORMATS = ("csv", "json", "html", "xlsx")


class StoredReport(Protocol):
    """A stored reconcile's row as `report` reads it (`stored.sql`: reconciliation_runs and the run's status)."""

    @property
    def run_id(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def summary(self) -> ReportData: ...
    @property
    def csv_file(self) -> str | None: ...
    @property
    def json_file(self) -> str | None: ...


class NotAReport(Exception):
    """The run exists but stores no reconciliation report (another job, or a dry run); says which."""


def find(conn: Connection, run_id: int | None) -> StoredReport | None:
    """The stored report of run `run_id` (None: the latest), or None when there is none.
    Raises `NotAReport` when the run exists but is of another job, a dry run, or recorded no report."""
    stored = conn.execute(_queries["report_run"], {"run_id": run_id}).first()
    if stored is None and run_id is not None:
        _say_what_run_it_is(conn, run_id)
    return cast(StoredReport | None, stored)


def discrepancies(conn: Connection, run_id: int) -> Iterable[DiscrepancyRow]:
    """Every discrepant user of the run, by user id (streamed)."""
    return finance.all_discrepancies(conn, run_id)


def document(conn: Connection, stored: StoredReport) -> Document:
    """The finance document of a stored report (what the terminal's table draws too)."""
    return finance.gather(conn, stored.summary, run_status=stored.status)


def render(conn: Connection, stored: StoredReport, fmt: str, *, xlsx_path: Path | None = None) -> str:
    """`csv` (the CSV file's text), `json` (the summary file's text) or `html`; `xlsx` is written to
    `xlsx_path` and its path returned."""
    if fmt == "json":
        return summary_json(stored.summary)
    if fmt == "csv":
        return csv_text(discrepancies(conn, stored.run_id))
    if fmt not in ("html", "xlsx"):
        raise ValueError(f"unknown file format {fmt!r}; one of {', '.join(FILE_FORMATS)}")
    document = finance.gather(conn, stored.summary, run_status=stored.status)
    if fmt == "html":
        return finance.render_html(document)
    assert xlsx_path is not None
    finance.write_xlsx(conn, document, xlsx_path)
    return str(xlsx_path)


def _say_what_run_it_is(conn: Connection, run_id: int) -> None:
    run = conn.execute(_queries["job_run"], {"run_id": run_id}).first()
    if run is None:
        return
    if run.job != JOB.name:
        raise NotAReport(f"run {run_id} is a {run.job} run ({run.status}), not a reconcile: it has no report; "
                         f"see `show {run_id}`")
    if run.dry_run:
        raise NotAReport(f"run {run_id} is a dry run of reconcile ({run.status}): a dry run stores no report; "
                         f"its stats are in `show {run_id}`")
    raise NotAReport(f"run {run_id} is a reconcile that recorded no report ({run.status}"
                     + (f": {run.error}" if run.error else "") + ")")
