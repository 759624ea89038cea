"""`jobs`: each job, its schedule, next fire time, last success and last run (light: psycopg2, no
SQLAlchemy, no job module)."""
from __future__ import annotations

import argparse

from cli import runs
from cli.database import reading
from cli.usage import EXIT_OK
from core import migrations
from core import runs as core_runs
from core.clock import utc_now
from core.settings import cron_trigger
from jobs import NAMES
from jobs.settings import RuleSettings


def cmd_jobs(args: argparse.Namespace, settings: RuleSettings) -> int:
    with reading(settings) as fetch:
        migrations.refuse_pending(migrations.pending_among(migrations.read_applied(fetch)))
        last, succeeded = core_runs.last_runs(fetch), runs.latest_successes(fetch)
    now = utc_now()
    lines = []
    for name in NAMES:
        schedule = settings.schedule_for(name)
        next_fire = cron_trigger(schedule).get_next_fire_time(None, now) if schedule else None
        lines.append(runs.JobLine(name, schedule, next_fire, succeeded.get(name), last.get(name)))
    runs.print_jobs(lines, as_json=args.json)
    return EXIT_OK
