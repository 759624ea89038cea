"""`report [RUN_ID|latest]`: a reconciliation report from the database, as a table, csv, json, html
or xlsx, to stdout or whole to `--output`."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from sqlalchemy import Engine

from cli.database import engine
from cli.report import NotAReport, render_report
from cli.usage import EXIT_FAILED, EXIT_OK, UsageError, bounded_int
from core.reports import write_text_atomically
from jobs.settings import RuleSettings


def cmd_report(args: argparse.Namespace, settings: RuleSettings) -> int:
    if args.json:
        if args.format not in ("table", "json"):
            raise UsageError(f"--json: the same as --format json, not --format {args.format}")
        args.format = "json"
    if args.period is not None:
        return _period_report(args, settings)
    run_id = _report_run(args.run)
    if args.format == "xlsx" and args.output is None and sys.stdout.isatty():
        raise UsageError("--format xlsx: a workbook is binary; give --output FILE (or redirect stdout)")
    try:
        text = _render(engine(settings), run_id, args)
    except NotAReport as error:
        raise UsageError(str(error)) from None
    if text is None:
        print("no reconciliation report " + ("yet" if run_id is None else f"for run {run_id}"), file=sys.stderr)
        return EXIT_FAILED
    if args.output is not None:
        print(f"wrote {args.output}", file=sys.stderr)
    elif args.format != "xlsx":
        print(text, end="" if text.endswith("\n") else "\n")
    return EXIT_OK


def _report_run(run: str) -> int | None:
    """The run id of `RUN_ID|latest` (None: the latest)."""
    if run == "latest":
        return None
    if not run.isdigit():
        raise UsageError(f"RUN_ID: must be a run id (a number) or 'latest', not {run!r}")
    try:
        return bounded_int(1)(run)
    except argparse.ArgumentTypeError as error:
        raise UsageError(f"RUN_ID: {error}") from None


def _render(database: Engine, run_id: int | None, args: argparse.Namespace) -> str | None:
    """The report as text (printed, or written whole to --output); an xlsx is written to its file."""
    output = Path(args.output) if args.output is not None else None
    if args.format != "xlsx":
        text = render_report(database, run_id, args.format)
        if text is not None and output is not None:
            write_text_atomically(output, text)
        return text
    with tempfile.TemporaryDirectory(dir=output.parent if output else None, prefix=".report-") as scratch:
        aside = Path(scratch) / "report.xlsx"
        written = render_report(database, run_id, "xlsx", xlsx_path=aside)
        if written is None:
            return None
        if output is not None:
            os.replace(aside, output)
        else:
            sys.stdout.buffer.write(aside.read_bytes())
            sys.stdout.flush()
    return str(output) if output else "-"


def _period_report(args: argparse.Namespace, settings: RuleSettings) -> int:
    """`report --period YYYY-MM`: a signed month exactly as signed, from its stored document."""
    from cli.command_close import period_argument
    from cli.period_report import render_period

    if args.run != "latest":
        raise UsageError(f"--period: a month's report is not a run's; give RUN_ID ({args.run}) or --period, not both")
    period = period_argument(args.period, "--period")
    if args.format == "xlsx" and args.output is None and sys.stdout.isatty():
        raise UsageError("--format xlsx: a workbook is binary; give --output FILE (or redirect stdout)")
    output = Path(args.output) if args.output is not None else None
    written = render_period(engine(settings), period, args.format, output)
    if written is None:
        print(f"no signed-off report for {period:%Y-%m}: the month is not closed "
              f"(`close {period:%Y-%m} --sign-off NAME` closes it)", file=sys.stderr)
        return EXIT_FAILED
    if output is not None:
        print(f"wrote {output}", file=sys.stderr)
    return EXIT_OK
