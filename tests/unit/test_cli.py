"""The command line's usage errors: exit 2, one line naming the argument, no traceback, and no run
started (unit tests have no database: a command that got as far as one would fail otherwise)."""
from __future__ import annotations

import pytest


USAGE_ERRORS = [
    (["frob"], "invalid choice: 'frob'"),
    (["run"], "the following arguments are required: JOB"),
    (["run", "no-such-job"], "argument JOB: invalid choice: 'no-such-job' (choose from 'expire-pending'"),
    (["run", "expire-pending", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "expire-pending", "--repair"], "--repair: only the reconcile job repairs"),
    (["run-all", "--repair"], "unrecognized arguments: --repair"),
    (["history", "--limit", "x"], "argument --limit: invalid int value: 'x'"),
    (["history", "--limit", "0"], "--limit: must be at least 1"),
    (["history", "--limit", "-5"], "--limit: must be at least 1"),
    (["history", "--job", "no-such-job"], "argument --job: invalid choice: 'no-such-job'"),
    (["history", "--status", "happy"], "argument --status: invalid choice: 'HAPPY'"),
    (["history", "--since", "yesterday"], "--since: not an ISO-8601 date or date-time: 'yesterday'"),
    (["show", "seven"], "argument RUN_ID: must be a run id (a number), not 'seven'"),
    (["explain", "bob"], "USER_ID: not a UUID: 'bob'"),
    (["balance", "bob"], "USER_ID: not a UUID: 'bob'"),
    (["run", "expire-points", "--as-of", "2062-06-01"], "--as-of: 2062-06-01T00:00:00+00:00 is more than 5 minutes after now ("),
    (["run-all", "--as-of", "2062-06-01", "--dry-run"], "add --allow-future if you mean it"),
    (["report", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
    (["report", "last-tuesday"], "RUN_ID: must be a run id"),
]


@pytest.mark.parametrize("args, message", USAGE_ERRORS, ids=[" ".join(a) or "nothing" for a, _ in USAGE_ERRORS])
def test_usage_error_exits_2_with_one_line_naming_the_argument(main_in_process, args, message):
    code, out, err = main_in_process(*args)

    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_a_bare_command_prints_the_usage_and_exits_2(main_in_process):
    code, out, err = main_in_process()

    assert code == 2 and out == ""
    assert err.startswith("usage: ") and "run-all" in err and "explain" in err


@pytest.mark.parametrize("args, message", [
    (["history", "--limit", "100000000000000000000"], "argument --limit: must be at most 9223372036854775807"),
    (["report", "99999999999999999999999"], "RUN_ID: must be at most 9223372036854775807"),
])
def test_numbers_beyond_bigint_are_usage_errors(main_in_process, args, message):
    code, _, err = main_in_process(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


COMMANDS = [["migrate"], ["run", "expire-pending"], ["run-all"], ["daemon"], ["jobs"], ["history"], ["show", "1"],
            ["explain", "00000000-0000-0000-0000-000000000001"], ["report"], ["health"], ["demo"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=[argv[0] for argv in COMMANDS])
def test_every_command_is_handled_by_a_function_of_its_command_module(argv):
    from cli.dispatch import handler_of
    from cli.parser import build_parser

    args = build_parser().parse_args(argv)
    handler = handler_of(args)

    assert callable(handler)
    assert handler.__module__.startswith("cli.command_")


def test_the_help_lists_every_command(capsys):
    from cli.parser import build_parser

    build_parser().print_help()

    listed = capsys.readouterr().out
    assert all(argv[0] in listed for argv in COMMANDS)
