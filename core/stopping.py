"""What a stop request does: a flag at once, statements in flight cancelled soon after, and the process
ended at a deadline, whatever still holds it.

Runs end after their current batch (they check `StopRequests.flag` between batches). A statement
still in flight `grace_seconds` after the first request, or at a second request, is cancelled, so
its batch rolls back and the run ends as stopped. What nothing can interrupt from here (a database
that hangs and never hears the cancel, a log pipe nobody reads) does not hold the process past
`deadline_seconds` after the first request: `at_deadline` ends it then. With the defaults a stopped
process is gone within 5 s, well inside Docker's 10 s between SIGTERM and SIGKILL. Who asks
(SIGTERM/SIGINT, heard by the face: `cli/process.py`) and how the process ends are not this module's
business.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from core.db import cancel_busy_connections

log = structlog.get_logger("rewards.stop")

STOP_GRACE_SECONDS = 2.0
STOP_DEADLINE_SECONDS = 3.5
_LAST_WORDS_SECONDS = 0.3  # how long the deadline waits for its log line (a full log pipe never takes it)


class StopRequests:
    """The stop flag of a process, and the escalation of the requests that set it."""

    def __init__(self, grace_seconds: float = STOP_GRACE_SECONDS, deadline_seconds: float = STOP_DEADLINE_SECONDS,
                 at_deadline: Callable[[], None] | None = None,
                 cancel: Callable[[], int] = cancel_busy_connections) -> None:
        self.flag = threading.Event()
        self.grace_seconds = grace_seconds
        self.deadline_seconds = deadline_seconds
        self.at_deadline = at_deadline
        self.cancel = cancel  # held, so a late escalation thread calls what this stop was given
        self._received = 0

    def received(self, count: int = 1) -> None:
        """`count` requests arrived together: set the flag; the first ones give the batch in flight its
        grace and start the deadline, a later one cancels it at once. Called from one thread (the
        face's signal watcher), which never waits here: a cancel can hang as long as the database."""
        first = self._received == 0
        self._received += count
        self.flag.set()
        if first:
            _in_background("stop-grace", self._cancel_after_grace)
            if self.at_deadline is not None:
                _in_background("stop-deadline", self._end_at_deadline)
        else:
            _in_background("stop-cancel", lambda: self._cancel("a second stop signal"))

    def _cancel_after_grace(self) -> None:
        time.sleep(self.grace_seconds)
        self._cancel(f"still busy {self.grace_seconds:g} s after the stop signal")

    def _cancel(self, reason: str) -> None:
        cancelled = self.cancel()
        if cancelled:
            log.warning("cancelling statements in flight", action="statements_cancelled", connections=cancelled,
                        reason=reason)

    def _end_at_deadline(self) -> None:
        time.sleep(self.deadline_seconds)
        said = _in_background("stop-last-words", lambda: log.error(
            "still not stopped after the stop signal; ending the process (a run left RUNNING is taken over "
            "by the next one)", action="stop_deadline", seconds=self.deadline_seconds))
        said.join(_LAST_WORDS_SECONDS)
        at_deadline = self.at_deadline
        assert at_deadline is not None  # this thread is started only when it is set
        at_deadline()


def _in_background(name: str, target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


