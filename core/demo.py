"""`python scheduler.py demo`: the whole product on realistic sample data, with nothing configured.

It never touches `DATABASE_URL`: it starts its own embedded PostgreSQL under
`REWARDS_DATA_DIR/demo`, recreates the `rewards_demo` database in it (a fresh one each time),
migrates it, loads a sample world (`core.sample_data`: a few thousand users over two years, referral
chains, payments with refunds, redemptions, some cache drift), runs the pipeline once for one as-of
instant, and prints what each job changed and the reconciliation report. Reports are written under
`REWARDS_DATA_DIR/demo/reports` unless `REWARDS_REPORTS_DIR` is set.

`build_demo` does the work and returns a `DemoOutcome`; `format_summary` renders it; `run_demo`
(the CLI's entry) prints progress to stderr and the summary to stdout.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from core import migrations
from core.clock import utc_now
from core.db import make_engine, redacted, start_embedded_server
from core.runner import RunResult, run_job
from core.settings import Settings
from core.summary import describe_stats

DEMO_DATABASE = "rewards_demo"
DEFAULT_USERS = 3000
DEFAULT_SEED = 42
SAMPLE_YEARS = 2

Say = Callable[[str], None]


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

    @property
    def succeeded(self) -> bool:
        return all(result.status == "SUCCEEDED" for result in self.results)


def demo_settings(settings: Settings, database_url: str) -> Settings:
    """The user's rule settings, on the demo database, with reports under the demo directory."""
    update: dict[str, object] = {"database_url": database_url}
    if "reports_dir" not in settings.model_fields_set:
        update["reports_dir"] = settings.data_dir / "demo" / "reports"
    return settings.model_copy(update=update)


def fresh_demo_database(data_dir: Path) -> str:
    """Start the demo's embedded server; drop and create its database; return the database's URL."""
    server_url = start_embedded_server(data_dir / "demo")
    admin = make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DEMO_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{DEMO_DATABASE}"'))
    finally:
        admin.dispose()
    return make_url(server_url).set(database=DEMO_DATABASE).render_as_string(hide_password=False)


def build_demo(settings: Settings, *, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED,
               as_of: datetime | None = None, say: Say = lambda _line: None,
               batch_progress: Callable[..., None] | None = None) -> DemoOutcome:
    """Fresh database, sample data, the pipeline: what happened, for `format_summary`."""
    from core import sample_data
    from jobs import PIPELINE, reconcile

    as_of = as_of or utc_now().replace(microsecond=0)
    say(f"Starting the embedded PostgreSQL under {settings.data_dir / 'demo'} …")
    url = fresh_demo_database(settings.data_dir)
    settings = demo_settings(settings, url)
    engine = make_engine(url)
    try:
        migrations.migrate(engine)
        say(f"Generating sample data: {users:,} users over {SAMPLE_YEARS} years up to {as_of:%Y-%m-%d %H:%M}Z …")
        rows = sample_data.generate(engine, users=users, seed=seed, as_of=as_of, years=SAMPLE_YEARS,
                                    progress=lambda step: say(f"  {step}"))
        outcome = DemoOutcome(as_of, redacted(url), users, rows, reports_dir=settings.reports_dir)
        for job in PIPELINE:
            say(f"Running {job.name} …")
            result = run_job(job, settings=settings, engine=engine, as_of=as_of, trigger="manual",
                             **({"progress": batch_progress} if batch_progress else {}))
            outcome.results.append(result)
            if job.name == "reconcile" and result.status == "SUCCEEDED":
                outcome.reconciliation = reconcile.render_report(engine, result.run_id, "table")
                outcome.html_report = result.stats.get("html_report")
        return outcome
    finally:
        engine.dispose()


_BOOKKEEPING = {"scan_from", "high_water_as_of", "since", "report", "discrepancies_by_kind"}


def what_changed(stats: dict[str, object]) -> str:
    """A run's stats without zeros and bookkeeping (the reconciliation report follows anyway)."""
    return describe_stats({key: value for key, value in stats.items()
                           if key not in _BOOKKEEPING and value not in (0, None, {}, "")})


def format_summary(outcome: DemoOutcome) -> str:
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
        details = what_changed(result.stats)
        if details:
            lines.append(f"  {'':<18} {details}")
        if result.error:
            lines.append(f"  {'':<18} error: {result.error}")
    if outcome.reconciliation:
        lines += ["", outcome.reconciliation.rstrip("\n")]
    if outcome.html_report:
        lines += ["", f"Finance report (open in a browser): {outcome.html_report}"]
    lines += ["", f"Reports: {outcome.reports_dir.resolve() if outcome.reports_dir else ''}",
              "Run it again for a fresh database; `--users N` for a bigger (or smaller) world."]
    return "\n".join(lines) + "\n"


class _Console:
    """Progress on stderr: step lines, and on a terminal one line of batch progress per job."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self._progress_open = False

    def say(self, line: str) -> None:
        self._end_progress()
        print(line, file=sys.stderr, flush=True)

    def batches(self, *, job: str, batches: int, items: int, total: int | None) -> None:
        of_total = f" of {total:,}" if total is not None else ""
        print(f"\r  batch {batches:,}, {items:,}{of_total} done", end="", file=sys.stderr, flush=True)
        self._progress_open = True

    def _end_progress(self) -> None:
        if self._progress_open:
            print(file=sys.stderr)
            self._progress_open = False


def run_demo(settings: Settings, *, users: int = DEFAULT_USERS, seed: int = DEFAULT_SEED) -> int:
    """The CLI's `demo`: progress on stderr, the summary on stdout; 1 if a job failed."""
    from core.logs import configure_logging

    if settings.log_level == "INFO":  # the demo's own progress lines say what happens
        configure_logging(settings.log_format, "WARNING")
    console = _Console()
    outcome = build_demo(settings, users=users, seed=seed, say=console.say,
                         batch_progress=console.batches if console.interactive else None)
    console.say("Done.")
    print(format_summary(outcome), end="")
    return 0 if outcome.succeeded else 1
