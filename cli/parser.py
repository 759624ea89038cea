"""The command table: every command, its options and its handler (`module:function`, imported only
when that command runs, so `--help` and `--version` load nothing else)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from cli.usage import RUN_STATUSES, JobNames, UsageError, bounded_int, run_id


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def program_name() -> str:
    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called == "rewards-jobs" else "scheduler.py"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("rewards-jobs")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


class VersionAction(argparse.Action):
    """`--version`, with the package metadata read only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> NoReturn:
        print(f"rewards-jobs {version()}")
        parser.exit()


LISTING_JSON = "one JSON document, stable keys, for scripts"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=program_name(), description="Scheduled jobs of the referral rewards program.",
                    epilog="Exit codes: 0 done; 1 a job failed; 2 bad usage or configuration; "
                           "3 already running elsewhere. `%(prog)s COMMAND --help` for a command's options.")
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    def command(name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    command("migrate", "cli.command_database:cmd_migrate", "apply pending migrations")
    _add_running(command)
    command("daemon", "cli.command_daemon:cmd_daemon", "run the scheduler until SIGTERM or SIGINT")
    _add_listings(command)
    command("health", "cli.command_database:cmd_health", "exit 0 when the database answers and no migration is pending")
    demo = command("demo", "cli.command_demo:cmd_demo",
                   "sample data on an embedded database, the whole pipeline, a summary")
    demo.add_argument("--users", type=int, default=2000, metavar="N", help="users in the sample (default 2000)")
    demo.add_argument("--seed", type=int, default=42, help="the sample's random seed (default 42)")
    return parser


def _as_of_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--as-of", metavar="WHEN",
                     help="the run's as-of instant, ISO-8601 in UTC (a bare date is 00:00 UTC; default now)")
    sub.add_argument("--dry-run", action="store_true", help="compute and report what would change; change nothing")
    sub.add_argument("--allow-future", action="store_true",
                     help="accept an --as-of more than 5 minutes after now (refused otherwise: "
                          "a mistyped year would expire every point)")


def _add_running(command: Any) -> None:
    run = command("run", "cli.command_run:cmd_run", "run one job now")
    run.add_argument("job", metavar="JOB", choices=JobNames(), help="the job to run: %(choices)s")
    _as_of_options(run)
    run.add_argument("--repair", action="store_true", help="reconcile only: set discrepant cache rows to the ledger")
    run.add_argument("--json", action="store_true",
                     help='print a final JSON line {"job","run_id","status","as_of","stats"}, no progress bar')
    run_all = command("run-all", "cli.command_run:cmd_run_all", "run every job in pipeline order, one as-of for all")
    _as_of_options(run_all)
    run_all.add_argument("--json", action="store_true", help="print a JSON line per job, no progress bar")


def _add_listings(command: Any) -> None:
    jobs = command("jobs", "cli.command_jobs:cmd_jobs", "each job: schedule, next fire, last success, last run")
    jobs.add_argument("--json", action="store_true", help=LISTING_JSON)
    history = command("history", "cli.command_history:cmd_history", "recent runs, newest first, one line each")
    history.add_argument("--job", metavar="JOB", choices=JobNames(), help="only this job's runs: %(choices)s")
    history.add_argument("--status", metavar="S", type=str.upper, choices=RUN_STATUSES,
                         help="only runs with this status: %(choices)s")
    history.add_argument("--since", metavar="WHEN",
                         help="only runs started at or after this instant (ISO-8601, a bare date is 00:00 UTC)")
    history.add_argument("--limit", type=bounded_int(1), default=20, metavar="N", help="at most N runs (default 20)")
    history.add_argument("--json", action="store_true", help=LISTING_JSON)
    show = command("show", "cli.command_history:cmd_show",
                   "one run whole: trigger, as-of, settings, stats, error, host, pid, files")
    show.add_argument("run_id", metavar="RUN_ID", type=run_id, help="the run's id (see history)")
    show.add_argument("--json", action="store_true", help=LISTING_JSON)
    explain = command("explain", "cli.command_explain:cmd_explain",
                      "for support: a user's referrals, rewards, ledger rows and next expiries")
    explain.add_argument("user_id", metavar="USER_ID", help="the user's id (a UUID)")
    explain.add_argument("--as-of", metavar="WHEN", help="the instant to explain at, ISO-8601 in UTC (default now)")
    explain.add_argument("--json", action="store_true", help=LISTING_JSON)
    balance = command("balance", "cli.command_balance:cmd_balance",
                      "one user's ledger balance at an instant, with their lots and when each expires")
    balance.add_argument("user_id", metavar="USER_ID", help="the user's id (a UUID)")
    balance.add_argument("--as-of", metavar="WHEN", help="the instant, ISO-8601 in UTC (default now)")
    balance.add_argument("--json", action="store_true", help=LISTING_JSON)
    report = command("report", "cli.command_report:cmd_report", "a reconciliation report from the database")
    report.add_argument("run", nargs="?", default="latest", metavar="RUN_ID|latest",
                        help="the reconcile run (default: the latest)")
    report.add_argument("--format", choices=("table", "csv", "json", "html", "xlsx"), default="table",
                        help="table (default), csv, json, html or xlsx")
    report.add_argument("--output", metavar="FILE", help="write the report to FILE (whole) instead of stdout")
    report.add_argument("--period", metavar="YYYY-MM",
                        help="a signed-off month's report, exactly as it was signed (see close)")
    report.add_argument("--json", action="store_true", help="the same as --format json")
    close = command("close", "cli.command_close:cmd_close",
                    "a month's roll-forward, journal and liability schedule; --sign-off closes it")
    close.add_argument("period", metavar="YYYY-MM", help="the calendar month (UTC), like 2026-05")
    close.add_argument("--sign-off", metavar="NAME", help="sign the month off as NAME (once per month)")
    close.add_argument("--json", action="store_true", help=LISTING_JSON)
