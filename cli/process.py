"""The process: SIGTERM/SIGINT as stop requests, and how the daemon's process ends.

A Python signal handler runs only when the main thread returns to the interpreter, which a thread
blocked inside libpq (a lock wait, a hung server) never does. So the C-level handler also writes to
a wakeup pipe, and a watcher thread hands each signal to `core.stopping.StopRequests` at once (the
flag, then the cancelling of statements in flight after the grace or at a second signal).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from core.stopping import STOP_GRACE_SECONDS, StopRequests


def stop_on_signals(grace_seconds: float = STOP_GRACE_SECONDS) -> threading.Event:
    """Install SIGTERM/SIGINT handlers (main thread only) and return the stop flag they set."""
    requests = StopRequests(grace_seconds)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def request_stop(_signum: int, _frame: Any) -> None:
        requests.flag.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    threading.Thread(target=_watch, args=(read_end, requests), name="stop-signals", daemon=True).start()
    return requests.flag


def _watch(read_end: int, requests: StopRequests) -> None:
    while True:
        try:
            received = os.read(read_end, 64)
        except OSError:
            return
        if not received:
            return
        requests.received(len(received))


def run_daemon(settings: Any, jobs: tuple[Any, ...]) -> int:
    """`python scheduler.py daemon`: serve until SIGTERM/SIGINT, then exit 0."""
    from core.daemon import run_until_stopped

    stop = stop_on_signals()  # only a flag (heard even while a statement blocks): the stop watcher does the rest
    if not run_until_stopped(settings, jobs, stop):  # a run ignored the stop: do not wait for it (its batch rolls back)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
