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

