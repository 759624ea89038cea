"""The process: SIGTERM/SIGINT as stop requests, and how the daemon's process ends.

A Python signal handler runs only when the main thread returns to the interpreter, which a thread
blocked inside libpq (a lock wait, a hung server) never does. So the C-level handler also writes to
a wakeup pipe, and a watcher thread hands each signal to `core.stopping.StopRequests` at once (the
flag, then the cancelling of statements in flight after the grace or at a second signal, then the
end of the process at the deadline if something still holds it: a `run` exits 1 then, the daemon 0).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any

from core.stopping import STOP_GRACE_SECONDS, StopRequests

EXIT_STOPPED_RUN = 1  # a run stopped before its end failed (the daemon's stop is its normal end: 0)


def stop_on_signals(grace_seconds: float = STOP_GRACE_SECONDS, *, exit_code: int = EXIT_STOPPED_RUN) -> threading.Event:
    """Install SIGTERM/SIGINT handlers (main thread only) and return the stop flag they set; a process
    still alive at the stop deadline exits with `exit_code` there and then."""
    requests = StopRequests(grace_seconds, at_deadline=lambda: _exit_now(exit_code))
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


def _exit_now(code: int) -> None:
    """End the process without waiting for anything: not for a thread blocked in the database, not
    for a log line the pipe does not take, not for the interpreter's clean-ups."""
    os._exit(code)


def run_daemon(settings: Any, jobs: tuple[Any, ...]) -> int:
    """`python scheduler.py daemon`: serve until SIGTERM/SIGINT, then exit 0."""
    from core.daemon import run_until_stopped

    stop = stop_on_signals(exit_code=0)  # a flag (heard while a statement blocks): the stop watcher does the rest
    if not run_until_stopped(settings, jobs, stop):  # a run ignored the stop: do not wait for it (its batch rolls back)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        _exit_now(0)
    return 0
