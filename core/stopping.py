"""Stop requests (SIGTERM, SIGINT) that are heard even while a statement blocks in the server.

A Python signal handler runs only when the main thread returns to the interpreter, which a thread
blocked inside libpq (a lock wait, a hung server) never does. So the C-level handler also writes to
a wakeup pipe, and a watcher thread sets the stop flag at once. Runs end after their current batch;
a statement still in flight `grace_seconds` later (or at a second signal) is cancelled, so its batch
rolls back and the run ends as stopped.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import structlog

from core.db import cancel_busy_connections

log = structlog.get_logger("rewards.stop")

STOP_GRACE_SECONDS = 10.0


def stop_on_signals(grace_seconds: float = STOP_GRACE_SECONDS) -> threading.Event:
    """Install SIGTERM/SIGINT handlers (main thread only) and return the stop flag they set."""
    stop = threading.Event()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threading.Thread(target=_watch, args=(read_end, stop, grace_seconds), name="stop-signals",
                     daemon=True).start()
    return stop


def _watch(read_end: int, stop: threading.Event, grace_seconds: float) -> None:
    signals = 0
    while True:
        try:
            received = os.read(read_end, 64)
        except OSError:
            return
        if not received:
            return
        signals += len(received)
        stop.set()
        if signals == len(received):  # the first signal(s): give the batch its grace
            threading.Thread(target=_cancel_later, args=(grace_seconds,), name="stop-grace", daemon=True).start()
        else:
            _cancel("a second stop signal")


def _cancel_later(grace_seconds: float) -> None:
    threading.Event().wait(grace_seconds)
    _cancel(f"still busy {grace_seconds:g} s after the stop signal")


def _cancel(reason: str) -> None:
    cancelled = cancel_busy_connections()
    if cancelled:
        log.warning("cancelling statements in flight", action="statements_cancelled", connections=cancelled,
                    reason=reason)
