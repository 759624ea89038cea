"""rewards-jobs command line: `python scheduler.py COMMAND` (see `--help` and docs/architecture.md).

The entry point only: parse, then hand the command to `cli/dispatch.py`. The command table is
`cli/parser.py`; each command group has its module, `cli/command_*.py`.
Exit codes: 0 done; 1 a job failed; 2 bad usage or configuration; 3 already running elsewhere.
"""
from __future__ import annotations

import os
import sys

if __package__:  # installed: site-packages/rewards_jobs/scheduler.py, beside the cli, core and jobs it imports
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli.parser import build_parser  # noqa: E402 (after the path above)
from cli.usage import EXIT_USAGE, UsageError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse first (`--help` and `--version` import nothing else), then run the command."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as done:  # --help, --version
        return int(done.code or 0)
    from cli.dispatch import dispatch  # the settings and the database's errors: not for `--help`

    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
