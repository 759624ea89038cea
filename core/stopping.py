"""What a stop request does: a flag at once, then statements in flight cancelled.

Runs end after their current batch (they check `StopRequests.flag` between batches). A statement
still in flight `grace_seconds` after the first request, or at a second request, is cancelled, so
its batch rolls back and the run ends as stopped. Who asks (SIGTERM/SIGINT, heard by the face:
`cli/process.py`) is not this module's business.
"""
from __future__ import annotations

import threading

import structlog

from core.db import cancel_busy_connections

log = structlog.get_logger("rewards.stop")

STOP_GRACE_SECONDS = 10.0


class StopRequests:
    """The stop flag of a process, and the escalation of the requests that set it."""

    def __init__(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        self.flag = threading.Event()
        self.grace_seconds = grace_seconds
        self._received = 0

    def received(self, count: int = 1) -> None:
        """`count` requests arrived together: set the flag; the first ones give the batch in flight its
        grace, a later one cancels it at once. Called from one thread (the face's signal watcher)."""
        first = self._received == 0
        self._received += count
        self.flag.set()
        if first:
            threading.Thread(target=self._cancel_after_grace, name="stop-grace", daemon=True).start()
        else:
            _cancel("a second stop signal")

    def _cancel_after_grace(self) -> None:
        threading.Event().wait(self.grace_seconds)
        _cancel(f"still busy {self.grace_seconds:g} s after the stop signal")


def _cancel(reason: str) -> None:
    cancelled = cancel_busy_connections()
    if cancelled:
        log.warning("cancelling statements in flight", action="statements_cancelled", connections=cancelled,
                    reason=reason)
