"""`migrate` and `health`: the database's schema, and whether the database is fit to run on (the
container's health check: light, it reads through psycopg2 without SQLAlchemy)."""
from __future__ import annotations

import argparse
import sys

from cli.database import engine, reading
from cli.usage import EXIT_FAILED, EXIT_OK
from core import migrations
from jobs.settings import RuleSettings


def cmd_migrate(args: argparse.Namespace, settings: RuleSettings) -> int:
    applied = migrations.migrate(engine(settings, require_migrated=False))
    for migration in applied:
        print(f"applied {migration.version}_{migration.name}")
    if not applied:
        print("nothing to apply: the database is up to date")
    return EXIT_OK


def cmd_health(args: argparse.Namespace, settings: RuleSettings) -> int:
    with reading(settings) as fetch:
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
