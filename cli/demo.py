"""`python scheduler.py demo`: the whole product on realistic sample data, with nothing configured.

It never touches `DATABASE_URL`: it starts its own embedded PostgreSQL under
`REWARDS_DATA_DIR/demo`, recreates that server's default database (a fresh one each time: the one
every other command uses with `REWARDS_DATA_DIR` pointed at the demo's directory, so `history`,
`show`, `explain` and `report` explore the demo's data afterwards, as its closing text says),
migrates it, loads a sample world (`cli.sample_data`: a few thousand users over two years, referral
chains, payments with refunds, redemptions, some cache drift), runs the pipeline once for one as-of
instant, and prints what each job changed and the reconciliation report. Reports are written under
`REWARDS_DATA_DIR/demo/reports` unless `REWARDS_REPORTS_DIR` is set.

`build_demo` does the work and returns a `DemoOutcome`; `format_summary` renders it; `run_demo`
(the CLI's entry) prints the summary to stdout, with the step lines and progress display the
command line hands it.
"""
from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from cli.summary import describe_stats
from core import migrations
from core.clock import utc_now
from core.db import make_engine, redacted, start_embedded_server
from core.job import ProgressReporter, no_progress
from core.runner import RunResult, run_job
from jobs.settings import RuleSettings

DEMO_DATABASE = "postgres"  # the embedded server's default database: what the other commands use
MAINTENANCE_DATABASE = "template1"
DEFAULT_USERS = 3000
DEFAULT_SEED = 42
SAMPLE_YEARS = 2

Say = Callable[[str], None]
# A progress display per run: `with progress_for(job_name) as report: run_job(…, progress=report)`.
ProgressFor = Callable[[str], AbstractContextManager[ProgressReporter]]


@dataclass
class DemoOutcome:
    as_of: datetime
    database: str
    users: int
    sample_rows: dict[str, int]
    results: list[RunResult] = field(default_factory=list)
    reconciliation: str | None = None
    reports_dir: Path | None = None
    html_report: str | None = None
    data_dir: Path | None = None  # the REWARDS_DATA_DIR the demo was started with

    @property
    def succeeded(self) -> bool:
        return all(result.status == "SUCCEEDED" for result in self.results)


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
    finally:
        admin.dispose()
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def build_demo(settings: RuleSettings, *, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED,
               as_of: datetime | None = None, say: Say = lambda _line: None,
               progress_for: ProgressFor | None = None) -> DemoOutcome:
    """Fresh database, sample data, the pipeline: what happened, for `format_summary`."""
    from cli.report import render_report
    from cli import sample_data
    from jobs import PIPELINE

    as_of = as_of or utc_now().replace(microsecond=0)
    say(f"Starting the embedded PostgreSQL under {demo_data_dir(settings.data_dir)} …")
    url = fresh_demo_database(settings.data_dir)
    settings = demo_settings(settings, url)
    engine = make_engine(url)
    try:
        migrations.migrate(engine)
        say(f"Generating sample data: {users:,} users over {SAMPLE_YEARS} years up to {as_of:%Y-%m-%d %H:%M}Z …")
        rows = sample_data.generate(engine, users=users, seed=seed, as_of=as_of, years=SAMPLE_YEARS,
                                    progress=lambda step: say(f"  {step}"))
        outcome = DemoOutcome(as_of, redacted(url), users, rows, reports_dir=settings.reports_dir,
                              data_dir=settings.data_dir)
        for job in PIPELINE:
            say(f"Running {job.name} …")
            with (progress_for or _no_display)(job.name) as report:
                result = run_job(job, settings=settings, engine=engine, as_of=as_of, trigger="manual",
                                 progress=report)
            outcome.results.append(result)
            if job.name == "reconcile" and result.status == "SUCCEEDED":
                outcome.reconciliation = render_report(engine, result.run_id, "table")
                outcome.html_report = result.stats.get("html_report")
        return outcome
    finally:
        engine.dispose()


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


def explore_hint(data_dir: Path, reports_dir: Path | None, command: str = "python scheduler.py") -> list[str]:
    """How to look at the demo's data with the other commands: the exact environment to set."""
    env = f"DATABASE_URL= REWARDS_DATA_DIR={demo_data_dir(data_dir).resolve()}"
    if reports_dir is not None:
        env += f" REWARDS_REPORTS_DIR={reports_dir.resolve()}"
    return [
        "Explore the demo's data with the other commands, on the same embedded database:",
        "schedules (jobs), runs (history, show), a user (explain), the report (report).",
        f"  export {env}",
        *(f"  {command} {arguments}" for arguments in ("jobs", "history", "show RUN_ID", "explain USER_ID",
                                                        "report")),
        "Each takes --json for scripts. Run the demo again for a fresh database;",
        "`--users N` for a bigger (or smaller) world.",
    ]


def _indented(text: str, width: int) -> list[str]:
    """A run's details under its line, wrapped to the terminal's width (paths are never broken)."""
    indent = " " * 21
    return textwrap.wrap(text, width=max(width, 40), initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def format_summary(outcome: DemoOutcome, *, width: int = 80) -> str:
    """The readable end of the demo: the sample, what each job changed, the reconciliation."""
    lines = [
        "",
        f"Demo as of {outcome.as_of:%Y-%m-%d %H:%M:%S}Z on {outcome.database}",
        "Sample data: " + ", ".join(f"{table.replace('_', ' ')} {count:,}"
                                    for table, count in outcome.sample_rows.items()),
        "",
        "What each job did:",
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
        lines += explore_hint(outcome.data_dir, outcome.reports_dir, this_command())
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
