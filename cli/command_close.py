"""`close YYYY-MM [--sign-off NAME] [--json]`: a month's roll-forward, journal and liability schedule,
its files under REWARDS_REPORTS_DIR; with `--sign-off`, the month closed (jobs/period_close.py).

Exit codes: 0 done; 1 the month was signed off already (one line: by whom, when); 2 a bad YYYY-MM, an
empty NAME, or a sign-off of a month that has not ended."""
from __future__ import annotations

import argparse
import sys
from datetime import date

from cli.close import close_table
from cli.database import engine
from cli.terminal import stdout_console
from cli.usage import EXIT_FAILED, EXIT_OK, UsageError
from core.clock import when
from jobs.period_close import AlreadySigned, NotEnded, close, parse_period
from jobs.settings import RuleSettings


def cmd_close(args: argparse.Namespace, settings: RuleSettings) -> int:
    period = period_argument(args.period, "YYYY-MM")
    signer = None
    if args.sign_off is not None:
        signer = args.sign_off.strip()
        if not signer or not signer.isprintable():
            raise UsageError("--sign-off: NAME must be a name (not empty, one line)")
    try:
        closed = close(engine(settings), settings, period, sign_off=signer)
    except NotEnded as error:
        raise UsageError(f"--sign-off: {error}") from None
    except AlreadySigned as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(closed.text)
    else:
        sys.stdout.write(close_table(closed.document, width=stdout_console().width))
    if closed.signed_before is not None and signer is None:
        print(f"note: {closed.document['period']} was signed off by {closed.signed_before.by} at "
              f"{when(closed.signed_before.at)}; this is the month as known now (`report --period "
              f"{closed.document['period']}` shows it as signed)", file=sys.stderr)
    print(f"wrote {closed.files.journal} and {closed.files.json}", file=sys.stderr)
    return EXIT_OK


def period_argument(text: str, name: str) -> date:
    try:
        return parse_period(text)
    except ValueError as error:
        raise UsageError(f"{name}: {error}") from None
