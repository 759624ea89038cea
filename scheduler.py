"""rewards-jobs command line: `python scheduler.py COMMAND` (see `--help` and SPEC.md).

Exit codes: 0 done; 1 a job failed; 2 bad usage or configuration; 3 already running elsewhere.
This is the only module that knows about the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from datetime import datetime
from typing import Any, Callable, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


class UsageError(Exception):
    """Bad usage: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# ── helpers ──────────────────────────────────────────────────────────────────

def _as_of(args: argparse.Namespace) -> datetime:
    from core.clock import parse_as_of, utc_now

    if getattr(args, "as_of", None) is None:
        return utc_now()
    try:
        return parse_as_of(args.as_of)
    except ValueError as error:
        raise UsageError(f"--as-of: {error}") from None


def _engine(settings: Any, *, require_migrated: bool = True) -> Any:
    from core import migrations
    from core.db import engine_from_settings

    engine = engine_from_settings(settings)
    if require_migrated:
        migrations.require_migrated(engine)
    return engine


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT only set a flag; the run stops after its current batch."""
    stop = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    return stop


def _terminal_progress(*, job: str, batches: int, items: int, total: int | None) -> None:
    of_total = f" of {total}" if total is not None else ""
    print(f"\r{job}: batch {batches}, {items}{of_total} done", end="", file=sys.stderr, flush=True)


def _summary_line(result: Any) -> str:
    from core.summary import describe_stats

    seconds = f"{result.seconds:.2f}s"
    line = f"{result.job}: {result.status} as of {result.as_of.isoformat()} in {seconds} (run {result.run_id})"
    details = describe_stats(result.stats)
    if details:
        line += f"\n  {details}"
    if result.error:
        line += f"\n  error: {result.error}"
    return line


def _run_one(job: Any, args: argparse.Namespace, settings: Any, engine: Any, as_of: datetime,
             stop: threading.Event, *, repair: bool = False) -> Any:
    from core.runner import run_job

    interactive = sys.stderr.isatty() and not args.json
    result = run_job(job, settings=settings, engine=engine, as_of=as_of, trigger="manual",
                     dry_run=args.dry_run, repair=repair, stop=stop,
                     progress=_terminal_progress if interactive else _no_progress)
    if interactive:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_json(), default=str), flush=True)
    else:
        print(_summary_line(result), flush=True)
    return result


def _no_progress(**_: Any) -> None:
    return None


def _job(name: str) -> Any:
    from jobs import JOBS

    if name not in JOBS:
        raise UsageError(f"JOB: unknown job {name!r}; one of {', '.join(JOBS)}")
    return JOBS[name]


# ── commands ─────────────────────────────────────────────────────────────────

def cmd_migrate(args: argparse.Namespace, settings: Any) -> int:
    from core import migrations

    engine = _engine(settings, require_migrated=False)
    applied = migrations.migrate(engine)
    for migration in applied:
        print(f"applied {migration.version}_{migration.name}")
    if not applied:
        print("nothing to apply: the database is up to date")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Any) -> int:
    from core.runs import AlreadyRunning

    job = _job(args.job)
    if args.repair and job.name != "reconcile":
        raise UsageError("--repair: only the reconcile job repairs")
    as_of = _as_of(args)
    engine = _engine(settings)
    stop = _stop_on_signals()
    try:
        result = _run_one(job, args, settings, engine, as_of, stop,
                          repair=args.repair or settings.reconcile_repair)
    except AlreadyRunning as busy:
        print(busy, file=sys.stderr)
        return EXIT_BUSY
    return EXIT_OK if result.status == "SUCCEEDED" else EXIT_FAILED


def cmd_run_all(args: argparse.Namespace, settings: Any) -> int:
    from core.runs import AlreadyRunning
    from jobs import PIPELINE

    as_of = _as_of(args)
    engine = _engine(settings)
    stop = _stop_on_signals()
    failed = busy = False
    for job in PIPELINE:
        if stop.is_set():
            break
        try:
            result = _run_one(job, args, settings, engine, as_of, stop,
                              repair=settings.reconcile_repair)
        except AlreadyRunning as error:
            print(error, file=sys.stderr)
            busy = True
            continue
        failed = failed or result.status != "SUCCEEDED"
    if failed or stop.is_set():
        return EXIT_FAILED
    return EXIT_BUSY if busy else EXIT_OK


def cmd_jobs(args: argparse.Namespace, settings: Any) -> int:
    from core import runs
    from core.clock import utc_now
    from core.settings import cron_trigger
    from jobs import PIPELINE

    engine = _engine(settings)
    last = runs.last_runs(engine)
    now = utc_now()
    rows = []
    for job in PIPELINE:
        schedule = settings.schedule_for(job.name)
        next_fire = cron_trigger(schedule).get_next_fire_time(None, now) if schedule else None
        run = last.get(job.name)
        rows.append([
            job.name, schedule or "off", _when(next_fire),
            f"{run.status} run {run.id} ({run.trigger}) as of {_when(run.as_of)}" if run else "never run",
        ])
    _print_table(["job", "schedule (UTC)", "next fire", "last run"], rows)
    return EXIT_OK


def cmd_history(args: argparse.Namespace, settings: Any) -> int:
    from core import runs
    from core.summary import describe_stats

    if args.job:
        _job(args.job)
    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    engine = _engine(settings)
    rows = [[
        str(run.id), run.job, run.trigger, _when(run.as_of), run.status + (" (dry run)" if run.dry_run else ""),
        _when(run.started_at), f"{run.duration.total_seconds():.1f}s" if run.duration else "",
        run.error or describe_stats(run.stats),
    ] for run in runs.recent_runs(engine, job=args.job, limit=args.limit)]
    _print_table(["run", "job", "trigger", "as of", "status", "started", "took", "outcome"], rows)
    return EXIT_OK


def cmd_report(args: argparse.Namespace, settings: Any) -> int:
    from jobs import reconcile

    run_id: int | None = None
    if args.run != "latest":
        if not args.run.isdigit():
            raise UsageError(f"RUN_ID: must be a run id (a number) or 'latest', not {args.run!r}")
        run_id = int(args.run)
    if args.format == "xlsx" and args.output is None and sys.stdout.isatty():
        raise UsageError("--format xlsx: a workbook is binary; give --output FILE (or redirect stdout)")
    engine = _engine(settings)
    try:
        text = _render_report(reconcile, engine, run_id, args)
    except reconcile.NotAReport as error:
        raise UsageError(str(error)) from None
    if text is None:
        print("no reconciliation report " + ("yet" if run_id is None else f"for run {run_id}"), file=sys.stderr)
        return EXIT_FAILED
    if args.output is not None:
        print(f"wrote {args.output}", file=sys.stderr)
    elif args.format != "xlsx":
        print(text, end="" if text.endswith("\n") else "\n")
    return EXIT_OK


def _render_report(reconcile: Any, engine: Any, run_id: int | None, args: argparse.Namespace) -> str | None:
    """The report as text (printed, or written whole to --output); an xlsx is written to its file."""
    import tempfile
    from pathlib import Path

    from core.reports import write_text_atomically

    output = Path(args.output) if args.output is not None else None
    if args.format != "xlsx":
        text = reconcile.render_report(engine, run_id, args.format)
        if text is not None and output is not None:
            write_text_atomically(output, text)
        return text
    with tempfile.TemporaryDirectory(dir=output.parent if output else None, prefix=".report-") as scratch:
        aside = Path(scratch) / "report.xlsx"
        written = reconcile.render_report(engine, run_id, "xlsx", xlsx_path=aside)
        if written is None:
            return None
        if output is not None:
            os.replace(aside, output)
        else:
            sys.stdout.buffer.write(aside.read_bytes())
            sys.stdout.flush()
    return str(output) if output else "-"


def cmd_health(args: argparse.Namespace, settings: Any) -> int:
    from core import migrations

    engine = _engine(settings, require_migrated=False)
    waiting = migrations.pending(engine)
    if waiting:
        print(f"unhealthy: {len(waiting)} migration(s) pending", file=sys.stderr)
        return EXIT_FAILED
    print("ok")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, settings: Any) -> int:
    from core.daemon import run_daemon

    return run_daemon(settings)


def cmd_demo(args: argparse.Namespace, settings: Any) -> int:
    from core.demo import run_demo

    if args.users < 1:
        raise UsageError("--users: must be at least 1")
    return run_demo(settings, users=args.users, seed=args.seed)


# ── output ───────────────────────────────────────────────────────────────────

def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else ""


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


# ── parsing ──────────────────────────────────────────────────────────────────

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scheduler.py", description="Scheduled jobs of the referral rewards program.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("migrate", cmd_migrate, "apply pending migrations")
    run = command("run", cmd_run, "run one job now")
    run.add_argument("job", metavar="JOB")
    run.add_argument("--as-of", metavar="WHEN", help="ISO-8601 instant (a bare date is 00:00 UTC)")
    run.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    run.add_argument("--repair", action="store_true", help="reconcile: set discrepant cache rows to the ledger")
    run.add_argument("--json", action="store_true", help="print a final JSON line")
    run_all = command("run-all", cmd_run_all, "run every job in pipeline order")
    run_all.add_argument("--as-of", metavar="WHEN")
    run_all.add_argument("--dry-run", action="store_true")
    run_all.add_argument("--json", action="store_true", help="print a JSON line per job")
    command("daemon", cmd_daemon, "run the scheduler until SIGTERM or SIGINT")
    command("jobs", cmd_jobs, "each job, its schedule, next fire time and last run")
    history = command("history", cmd_history, "recent runs")
    history.add_argument("--job", metavar="JOB")
    history.add_argument("--limit", type=int, default=20, metavar="N")
    report = command("report", cmd_report, "a reconciliation report from the database")
    report.add_argument("run", nargs="?", default="latest", metavar="RUN_ID|latest")
    report.add_argument("--format", choices=("table", "csv", "json", "html", "xlsx"), default="table")
    report.add_argument("--output", metavar="FILE", help="write the report to FILE (whole) instead of stdout")
    command("health", cmd_health, "exit 0 when the database answers and no migration is pending")
    demo = command("demo", cmd_demo, "sample data on an embedded database, the whole pipeline, a summary")
    demo.add_argument("--users", type=int, default=3000, metavar="N", help="users in the sample (default 3000)")
    demo.add_argument("--seed", type=int, default=42, help="the sample's random seed (default 42)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import OperationalError

    from core.logs import configure_logging
    from core.migrations import MigrationError
    from core.settings import ConfigError, load_settings

    try:
        args = build_parser().parse_args(argv)
        settings = load_settings()
        configure_logging(settings.log_format, settings.log_level)
        return args.handler(args, settings)
    except (UsageError, ConfigError, MigrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else "unreachable"
        print(f"error: database: {reason}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # a bug: one line for the operator, the traceback at DEBUG
        import structlog

        structlog.get_logger("rewards.cli").debug("unexpected error", exc_info=True)
        first_line = (str(error).strip().splitlines() or [""])[0]
        print(f"error: {type(error).__name__}: {first_line}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
