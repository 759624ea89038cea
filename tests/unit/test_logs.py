"""Logging never stops the process it reports on: a log line whose pipe has no reader any more is
dropped, the lines after it too, and the process still ends with its own exit code (not 120, as a
failed final flush of stderr would make it)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO

LOGS_AFTER_THE_READER_IS_GONE = textwrap.dedent("""
    import sys, time
    import structlog
    from core.logs import configure_logging

    configure_logging("json")
    log = structlog.get_logger("test")
    log.info("first", action="first")
    sys.stdin.readline()  # the parent closed its end of the pipe: the next lines have no reader
    for number in range(3):
        log.info("unread", action="unread", number=number)
    import logging
    logging.getLogger("library").warning("a library's warning, also unread")
    sys.exit(int(sys.argv[1]))
""")


def run_with_its_log_reader_gone(exit_code: int) -> subprocess.CompletedProcess:
    child = subprocess.Popen([sys.executable, "-c", LOGS_AFTER_THE_READER_IS_GONE, str(exit_code)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert b'"action": "first"' in child.stderr.readline()  # type: ignore[union-attr]
    child.stderr.close()  # type: ignore[union-attr]
    child.stdin.write(b"go on\n")  # type: ignore[union-attr]
    child.stdin.close()  # type: ignore[union-attr]
    child.wait(timeout=30)
    return child


def test_a_process_whose_log_reader_is_gone_logs_on_and_ends_with_its_own_exit_code():
    assert run_with_its_log_reader_gone(0).returncode == 0
    assert run_with_its_log_reader_gone(3).returncode == 3



def lines_of_a_run(log_format: str) -> str:
    import io

    import structlog

    from core.logs import configure_logging

    out = io.StringIO()
    configure_logging(log_format, stream=out)
    with structlog.contextvars.bound_contextvars(job="reconcile", run_id=12, trigger="schedule"):
        structlog.get_logger("test").info(
            "run finished", action="run_finished", status="SUCCEEDED", error=None,
            stats={"balances_checked": 3000, "upstream_runs": {"expire-points": {"run_id": 11}}},
            jobs=["expire-points", "reconcile"], points={"EXPIRY": -30, "REWARD": 50})
    return out.getvalue()


def test_a_console_line_reads_as_words_without_a_repr_and_leaves_the_details_to_show():
    line = lines_of_a_run("console").strip()

    assert "\n" not in line and len(line) < 300
    assert 'jobs="expire-points, reconcile"' in line and 'points="EXPIRY -30, REWARD 50"' in line
    assert 'details="show 12"' in line
    assert "balances_checked" not in line and "upstream_runs" not in line  # the stats are `show`'s
    pairs = line.split("run finished", 1)[1]
    assert not any(mark in pairs for mark in ("{", "[", "'", "None"))


def test_a_json_line_keeps_the_run_details_nested():
    import json

    event = json.loads(lines_of_a_run("json"))

    assert event["stats"]["upstream_runs"] == {"expire-points": {"run_id": 11}}
    assert event["jobs"] == ["expire-points", "reconcile"] and "details" not in event
