"""`history` and `show RUN_ID`: the runs recorded in `job_runs`, a line each or one whole."""
from __future__ import annotations

import argparse
import sys

from cli import runs
from cli.database import engine
from cli.show import print_run
from cli.terminal import print_json
from cli.usage import EXIT_FAILED, EXIT_OK, instant
from jobs.settings import RuleSettings


def cmd_history(args: argparse.Namespace, settings: RuleSettings) -> int:
    since = instant(args.since, "--since") if args.since else None
    found = runs.history(engine(settings), job=args.job, status=args.status, since=since, limit=args.limit)
    runs.print_history(found, as_json=args.json)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, settings: RuleSettings) -> int:
    run = runs.one_run(engine(settings), args.run_id)
    if run is None:
        print(f"no run {args.run_id}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print_json(runs.run_document(run))
    else:
        print_run(run)
    return EXIT_OK
