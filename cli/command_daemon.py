"""`daemon`: every job on its schedule until SIGTERM or SIGINT (the scheduler is `core/daemon.py`,
the process's signals and end `cli/process.py`)."""
from __future__ import annotations

import argparse

from cli.process import run_daemon
from jobs.settings import RuleSettings
from jobs import PIPELINE


def cmd_daemon(args: argparse.Namespace, settings: RuleSettings) -> int:
    return run_daemon(settings, PIPELINE)
