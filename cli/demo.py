"""`python scheduler.py demo`: the whole product living through a year of realistic sample data, with
nothing configured.

It never touches `DATABASE_URL`: it starts its own embedded PostgreSQL under
`REWARDS_DATA_DIR/demo`, recreates that server's default database (a fresh one each time: the one
every other command uses with `REWARDS_DATA_DIR` pointed at the demo's directory, so `history`,
`report`, `balance` and `explain` explore the demo's data afterwards, as its closing text says), and
migrates it. Then the sample year (`SampleYear`), up to the demo's as-of (now):

1. the sample world (`cli.sample_data`) as it stood a year ago: users who signed up over the two years
   before, referral chains, payments with refunds, redemptions, some cache drift; the pipeline's first
   `run-all` there catches up on those two years (the product's first day);
2. every week of the year, the app's activity of the week (`sample_data.timeline`: sign-ups,
   activations, payments, grants and redemptions dated through the week, refunds of payments already
   rewarded, now and then a cache row off), then `run-all` as of the week's end, so every reconcile of
   the year, its liability, its months, its clawbacks and its drift, are real; half way through, that
   week's reconcile repairs the cache (`REWARDS_RECONCILE_REPAIR=true`);
3. the last month that had ended by then is closed and signed off (`close YYYY-MM --sign-off`);
4. payments dated in that month arrive late, and recurring-rewards runs back-dated into it: the
   closed month's totals change;
5. the last week's activity and the last `run-all`, whose reconcile reports that change as a
   restatement of the signed month.

The runs are `run-all`'s (`cli.command_run.check_before_runs`, then `core.runner.run_job` for each
job of the pipeline in order, going on past a failure), in this process. Reports are written under
`REWARDS_DATA_DIR/demo/reports` unless `REWARDS_REPORTS_DIR` is set.

`build_demo` does the work and returns a `DemoOutcome`; `format_summary` renders it; `run_demo`
(the CLI's entry) prints the summary to stdout, with the step lines and progress display the
command line hands it.
"""
from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from cli.summary import describe_stats
from core import migrations
from core.clock import utc_now, when
from core.db import make_engine, redacted, start_embedded_server
from core.job import ProgressReporter, no_progress
from core.runner import RunResult, run_job
from jobs.settings import RuleSettings

if TYPE_CHECKING:
    from cli.sample_data import Timeline

DEMO_DATABASE = "postgres"  # the embedded server's default database: what the other commands use
MAINTENANCE_DATABASE = "template1"
DEFAULT_USERS = 2000  # by the last day; the parser says the same (cli/parser.py)
DEFAULT_SEED = 42
SAMPLE_YEARS = 2  # the history the world has when the year begins
WEEKS = 52  # the year the demo lives through, a run-all a week
SIGNER = "Demo Controller"
LATE_PAYMENTS = 3
REPAIR_WEEK = WEEKS // 2  # the week ops repair the cache's drift once (it builds up again after)

Say = Callable[[str], None]
# A progress display per run: `with progress_for(job_name) as report: run_job(…, progress=report)`.
ProgressFor = Callable[[str], AbstractContextManager[ProgressReporter]]


@dataclass(frozen=True)
class SampleYear:
    """The demo's calendar: a run-all at each of `weekly` (a year ago, then every week), the month
    `closed` after them, a back-dated run at `late_as_of` in it, and the last run-all at `end`."""

    end: datetime

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=WEEKS)

    @property
    def weekly(self) -> list[datetime]:
        return [self.start + timedelta(weeks=week) for week in range(WEEKS)]

    @property
    def closed(self) -> date:
        """The last calendar month that had ended by the last weekly run."""
        from jobs.period_close import previous_month

        last = self.weekly[-1]
        return previous_month(date(last.year, last.month, 1))

    @property
    def closed_from(self) -> datetime:
        from jobs.period_close import first_instant

        return first_instant(self.closed)

    @property
    def closed_until(self) -> datetime:
        from jobs.period_close import first_instant, next_month

        return first_instant(next_month(self.closed))

    @property
    def late_as_of(self) -> datetime:
        """The back-dated run's as-of: the closed month's last second."""
        return self.closed_until - timedelta(seconds=1)


def world_users(users: int) -> int:
    """The world's users a year before the end, so that about `users` have signed up by the end
    (`SampleWorld.users_until`: sign-ups grow as the square of time)."""
    growth = 1 + WEEKS * 7 / 365.25 / SAMPLE_YEARS
    return max(1, round(users / growth ** 2))


@dataclass
class DemoOutcome:
    as_of: datetime
    database: str
    users: int
    sample_rows: dict[str, int]
    results: list[RunResult] = field(default_factory=list)  # the last run-all's
    reconciliation: str | None = None
    reports_dir: Path | None = None
    html_report: str | None = None
    data_dir: Path | None = None  # the REWARDS_DATA_DIR the demo was started with
    start: datetime | None = None
    weekly: list[RunResult] = field(default_factory=list)  # every run of the weekly run-alls
    closed_period: str | None = None
    closed_closing: int | None = None
    late_payments: list[Any] = field(default_factory=list)  # sample_data.LatePayment
    late_run: RunResult | None = None
    restatements: dict[str, Any] | None = None  # the last reconcile's

    @property
    def all_runs(self) -> list[RunResult]:
        return [*self.weekly, *([self.late_run] if self.late_run else []), *self.results]

    @property
    def succeeded(self) -> bool:
        return all(result.status == "SUCCEEDED" for result in self.all_runs)

    @property
    def last_reconcile(self) -> RunResult | None:
        return next((result for result in reversed(self.results) if result.job == "reconcile"), None)

    @property
    def user_to_explore(self) -> str | None:
        """A user whose year has a story: the referrer the late payments rewarded."""
        return self.late_payments[0].referrer_user_id if self.late_payments else None


def demo_settings(settings: RuleSettings, database_url: str) -> RuleSettings:
    """The user's rule settings, on the demo database, with reports under the demo directory."""
    update: dict[str, object] = {"database_url": database_url}
    if "reports_dir" not in settings.model_fields_set:
        update["reports_dir"] = settings.data_dir / "demo" / "reports"
    return settings.model_copy(update=update)


def demo_data_dir(data_dir: Path) -> Path:
    """The demo's `REWARDS_DATA_DIR`: set it for other commands to use the demo's database."""
    return data_dir / "demo"


def fresh_demo_database(data_dir: Path) -> str:
    """Start the demo's embedded server; drop and create its database; return the database's URL."""
    server_url = start_embedded_server(demo_data_dir(data_dir))
    admin_url = make_url(server_url).set(database=MAINTENANCE_DATABASE)
    admin = make_engine(admin_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{DEMO_DATABASE}"'))
            # A demo's thousands of small commits need not wait for the disk: a crash could lose the
            # last moments, never consistency, and the demo starts afresh anyway.
            conn.execute(text(f'ALTER DATABASE "{DEMO_DATABASE}" SET synchronous_commit = off'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def run_all(settings: RuleSettings, engine: Engine, as_of: datetime,
            progress_for: ProgressFor | None = None, *, repair: bool = False) -> list[RunResult]:
    """`run-all --as-of AS_OF` in this process: every job of the pipeline in order, past a failure; with
    `repair`, as with REWARDS_RECONCILE_REPAIR=true (reconcile sets discrepant cache rows to the ledger)."""
    from jobs import PIPELINE

    results = []
    for job in PIPELINE:
        with (progress_for or _no_display)(job.name) as report:
            results.append(run_job(job, settings=settings, engine=engine, as_of=as_of, trigger="manual",
                                   repair=repair and job.name == "reconcile", progress=report))
    return results


def build_demo(settings: RuleSettings, *, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED,
               as_of: datetime | None = None, say: Say = lambda _line: None,
               progress_for: ProgressFor | None = None) -> DemoOutcome:
    """Fresh database, a year of sample data and weekly runs, a month closed and restated: what
    happened, for `format_summary`."""
    from cli import sample_data
    from cli.command_run import check_before_runs
    from jobs import PIPELINE

    year = SampleYear(as_of or utc_now().replace(microsecond=0))
    say(f"Starting the embedded PostgreSQL under {demo_data_dir(settings.data_dir)} …")
    url = fresh_demo_database(settings.data_dir)
    settings = demo_settings(settings, url)
    engine = make_engine(url)
    world_size = world_users(users)
    try:
        migrations.migrate(engine)
        check_before_runs(settings, engine, PIPELINE, dry_run=False)
        say(f"Generating sample data: {world_size:,} users over the {SAMPLE_YEARS} years up to "
            f"{year.start:%Y-%m-%d}, about {users:,} by {year.end:%Y-%m-%d} …")
        sample_data.generate(engine, users=world_size, seed=seed, as_of=year.start, years=SAMPLE_YEARS)
        outcome = DemoOutcome(year.end, redacted(url), users, {}, reports_dir=settings.reports_dir,
                              data_dir=settings.data_dir, start=year.start)
        with sample_data.timeline(engine, users=world_size, seed=seed, as_of=year.start, years=SAMPLE_YEARS,
                                  last=year.end, refunds=True, drift=True) as weeks:
            _live_through_the_year(outcome, year, settings, engine, weeks, say)
            _close_the_month(outcome, year, settings, engine, say)
            _late_payments(outcome, year, settings, engine, seed, say)
            say(f"The last week, then run-all as of {when(year.end)} …")
            weeks.advance(year.end)
        outcome.sample_rows = sample_data.count_rows(engine)
        outcome.results = run_all(settings, engine, year.end, progress_for)
        _read_the_report(outcome, engine)
        return outcome
    finally:
        engine.dispose()


def _live_through_the_year(outcome: DemoOutcome, year: SampleYear, settings: RuleSettings, engine: Engine,
                           weeks: Timeline, say: Say) -> None:
    """A run-all at the year's start (catching up on the world's history), then each week the app's
    activity of the week and a run-all as of its end."""
    month = None
    for number, week in enumerate(year.weekly):
        if number:
            weeks.advance(week)
        if f"{week:%Y-%m}" != month:
            month = f"{week:%Y-%m}"
            say(f"  {month}: each week the app's activity, then run-all (from {week:%Y-%m-%d}) …")
        repair = number == REPAIR_WEEK
        if repair:
            say(f"  {week:%Y-%m-%d}: run-all with REWARDS_RECONCILE_REPAIR=true: the cache set to the ledger …")
        outcome.weekly += run_all(settings, engine, week, repair=repair)


def _close_the_month(outcome: DemoOutcome, year: SampleYear, settings: RuleSettings, engine: Engine,
                     say: Say) -> None:
    from jobs.period_close import close, label

    outcome.closed_period = label(year.closed)
    say(f"Closing {outcome.closed_period}: close {outcome.closed_period} --sign-off \"{SIGNER}\" …")
    closed = close(engine, settings, year.closed, sign_off=SIGNER)
    outcome.closed_closing = int(closed.document["roll_forward"]["closing"])


def _late_payments(outcome: DemoOutcome, year: SampleYear, settings: RuleSettings, engine: Engine, seed: int,
                   say: Say) -> None:
    """Payments dated in the closed month arrive now; recurring-rewards runs back-dated into it."""
    from cli import sample_data
    from jobs import JOBS

    outcome.late_payments = sample_data.late_payments(
        engine, seed=seed, period_from=year.closed_from, period_to=year.closed_until, recorded_at=year.end,
        count=LATE_PAYMENTS, months=settings.recurring_months)
    say(f"{len(outcome.late_payments)} payments dated in {outcome.closed_period} arrive late; "
        f"recurring-rewards runs --as-of {when(year.late_as_of)} …")
    outcome.late_run = run_job(JOBS["recurring-rewards"], settings=settings, engine=engine,
                               as_of=year.late_as_of, trigger="manual")


def _read_the_report(outcome: DemoOutcome, engine: Engine) -> None:
    from cli.report import render_report

    reconcile = outcome.last_reconcile
    if reconcile is None or reconcile.status != "SUCCEEDED":
        return
    outcome.reconciliation = render_report(engine, reconcile.run_id, "table")
    outcome.html_report = reconcile.stats.get("html_report")
    summary = json.loads(render_report(engine, reconcile.run_id, "json") or "{}")
    outcome.restatements = summary.get("restatements")


def _no_display(_job: str) -> AbstractContextManager[ProgressReporter]:
    return nullcontext(no_progress)


def what_changed(stats: dict[str, object], job: str | None = None) -> str:
    """A run's stats without zeros and bookkeeping (the reconciliation report follows anyway)."""
    return describe_stats(stats, job=job, brief=True)


def this_command() -> str:
    """The command line that started this process, as a person types it again from here: `rewards-jobs`
    when installed, else this interpreter (the virtualenv's, which has the dependencies) and the script."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("scheduler.py")
    if script.name == "rewards-jobs":
        return "rewards-jobs"
    return f"{_from_here(Path(sys.executable))} {_from_here(script.resolve())}"


def _from_here(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def explore_commands(outcome: DemoOutcome) -> list[str]:
    """The commands the summary ends with, each runnable as printed (with the environment it sets)."""
    commands = ["report"]
    if outcome.closed_period:
        commands.append(f"report --period {outcome.closed_period}")
    if outcome.user_to_explore:
        commands += [f"balance {outcome.user_to_explore}", f"explain {outcome.user_to_explore}"]
    commands.append("history")
    if outcome.last_reconcile is not None and outcome.last_reconcile.run_id is not None:
        commands.append(f"show {outcome.last_reconcile.run_id}")
    return [*commands, "jobs"]


def explore_hint(data_dir: Path, reports_dir: Path | None, command: str = "python scheduler.py",
                 commands: list[str] | None = None) -> list[str]:
    """How to look at the demo's data with the other commands: the exact environment to set."""
    env = f"DATABASE_URL= REWARDS_DATA_DIR={demo_data_dir(data_dir).resolve()}"
    if reports_dir is not None:
        env += f" REWARDS_REPORTS_DIR={reports_dir.resolve()}"
    return [
        "Explore the demo's data with the other commands, on the same embedded database:",
        "the last report, the signed month, a user's balance and story, the runs.",
        f"  export {env}",
        *(f"  {command} {arguments}" for arguments in (commands or ["report", "history", "jobs"])),
        "Each takes --json for scripts. Run the demo again for a fresh database;",
        "`--users N` for a bigger (or smaller) world.",
    ]


def _indented(text: str, width: int) -> list[str]:
    """A run's details under its line, wrapped to the terminal's width (paths are never broken)."""
    indent = " " * 21
    return textwrap.wrap(text, width=max(width, 40), initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def _wrapped(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=max(width, 40), subsequent_indent="  ", break_long_words=False,
                         break_on_hyphens=False)


def year_lines(outcome: DemoOutcome, width: int = 80) -> list[str]:
    """The year in a few lines: the weekly runs, the signed month, the late payments and their run."""
    if outcome.start is None:
        return []
    weekly = outcome.weekly
    failed = [result for result in weekly if result.status != "SUCCEEDED"]
    as_ofs = sorted({result.as_of for result in weekly})
    lines = _wrapped(
        f"The year: run-all at {len(as_ofs)} weekly as-ofs from {outcome.start:%Y-%m-%d} to "
        f"{as_ofs[-1]:%Y-%m-%d} ({len(weekly):,} runs, "
        + (f"{len(failed)} failed: " + ", ".join(f"{r.job} as of {r.as_of:%Y-%m-%d}" for r in failed[:3])
           if failed else "all succeeded") + "), the app's activity between them.", width) if as_ofs else []
    repairs = [result for result in weekly if result.job == "reconcile" and result.stats.get("repaired")]
    for result in repairs:
        lines += _wrapped(f"Repaired: reconcile as of {result.as_of:%Y-%m-%d} (run {result.run_id}) set "
                          f"{result.stats['repaired']} cache rows to the ledger; the drift builds up again after.",
                          width)
    if outcome.closed_period:
        lines += _wrapped(f"Closed: {outcome.closed_period}, signed off by {SIGNER}; closing liability "
                          f"{outcome.closed_closing or 0:,} points.", width)
    if outcome.late_run is not None:
        paid = ", ".join(f"{late.paid_at:%Y-%m-%d}" for late in outcome.late_payments)
        arrived = (f"Then {len(outcome.late_payments)} payments dated in {outcome.closed_period} arrived late "
                   f"({paid})" if paid else f"Then no payment dated in {outcome.closed_period} arrived late "
                   "(no unpaid reward month in it)")
        lines += _wrapped(f"{arrived}: recurring-rewards {outcome.late_run.status} back-dated to "
                          f"{when(outcome.late_run.as_of)} (run {outcome.late_run.run_id}): "
                          f"{what_changed(outcome.late_run.stats, outcome.late_run.job) or 'nothing to write'}.",
                          width)
    return lines


def restatement_line(restatements: dict[str, Any] | None, width: int = 80) -> list[str]:
    """What the last reconcile says changed in signed months since their sign-off, in one sentence."""
    if not restatements:
        return []
    months = restatements.get("months") or []
    if not months:
        return _wrapped(f"The last report restates nothing: {restatements.get('months_checked', 0)} signed "
                        "month(s) unchanged.", width)
    changes = "; ".join(f"{month['period']} (signed by {month['signed_by']}), closing "
                        f"{month['closing_change']:+,} points{_dollars(month.get('closing_change_usd'))}"
                        for month in months)
    return _wrapped(f"The last report restates {changes}: see Restatements below.", width)


def _dollars(amount: str | None) -> str:
    if amount is None:
        return ""
    sign = "-" if amount.startswith("-") else "+"
    return f" ({sign}${Decimal(amount.lstrip('-')):,.2f})"


def format_summary(outcome: DemoOutcome, *, width: int = 80) -> str:
    """The readable end of the demo: the year, what the last run-all changed, the reconciliation."""
    lines = [
        "",
        f"Demo as of {outcome.as_of:%Y-%m-%d %H:%M:%S}Z on {outcome.database}",
        "Sample data: " + ", ".join(f"{table.replace('_', ' ')} {count:,}"
                                    for table, count in outcome.sample_rows.items()),
        *year_lines(outcome, width),
        *restatement_line(outcome.restatements, width),
        "",
        "What each job did in the last run-all:" if outcome.start else "What each job did:",
    ]
    for result in outcome.results:
        lines.append(f"  {result.job:<18} {result.status} in {result.seconds:.2f}s (run {result.run_id})")
        details = what_changed(result.stats, result.job)
        if details:
            lines += _indented(details, width)
        if result.error:
            lines += _indented(f"error: {result.error}", width)
    if outcome.reconciliation:
        lines += ["", outcome.reconciliation.rstrip("\n")]
    if outcome.html_report:
        lines += ["", f"Finance report (open in a browser): {outcome.html_report}"]
    lines += ["", f"Reports: {outcome.reports_dir.resolve() if outcome.reports_dir else ''}", ""]
    if outcome.data_dir is not None:
        lines += explore_hint(outcome.data_dir, outcome.reports_dir, this_command(), explore_commands(outcome))
    return "\n".join(lines) + "\n"


def run_demo(settings: RuleSettings, *, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED,
             say: Say | None = None, progress_for: ProgressFor | None = None) -> int:
    """The CLI's `demo`: step lines through `say` (stderr by default), the summary on stdout; 1 if a job failed."""
    from core.logs import configure_logging

    if settings.log_level == "INFO":  # the demo's own step lines say what happens
        configure_logging(settings.log_format, "WARNING")
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    outcome = build_demo(settings, users=users, seed=seed, say=say, progress_for=progress_for)
    say("Done.")
    from cli.terminal import stdout_console

    print(format_summary(outcome, width=stdout_console().width), end="")
    return 0 if outcome.succeeded else 1
