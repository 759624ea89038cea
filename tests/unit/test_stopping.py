"""A stop request: the flag at once, statements in flight cancelled after the grace (at once on a
second request), and the process ended at the deadline whatever blocks it: a cancel that hangs with
the database, a log line that the pipe does not take."""
from __future__ import annotations

import threading
import time
from typing import Any

from core import stopping
from core.stopping import StopRequests


class Recorder:
    """When each call came, in seconds after `started`."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls: list[float] = []
        self.called = threading.Event()

    def __call__(self, *_args: Any, **_kwargs: Any) -> int:
        self.calls.append(time.monotonic() - self.started)
        self.called.set()
        return 1


def hang_forever(*_args: Any, **_kwargs: Any) -> None:
    threading.Event().wait()


def test_the_flag_is_set_at_once_and_statements_are_cancelled_after_the_grace():
    cancelled = Recorder()
    requests = StopRequests(grace_seconds=0.3, cancel=cancelled)

    requests.received()

    assert requests.flag.is_set() and cancelled.calls == []
    assert cancelled.called.wait(2)
    assert 0.3 <= cancelled.calls[0] < 1


def test_a_second_request_cancels_at_once():
    cancelled = Recorder()
    requests = StopRequests(grace_seconds=60, cancel=cancelled)
    requests.received()

    requests.received()

    assert cancelled.called.wait(1)
    assert cancelled.calls[0] < 0.5


def test_the_deadline_ends_the_process_while_the_cancel_hangs_with_the_database():
    ended = Recorder()

    StopRequests(grace_seconds=0.1, deadline_seconds=0.5, at_deadline=ended, cancel=hang_forever).received()

    assert ended.called.wait(3)
    assert 0.5 <= ended.calls[0] < 1


def test_the_deadline_does_not_wait_for_a_log_line_the_pipe_does_not_take(monkeypatch):
    monkeypatch.setattr(stopping, "log", type("BlockedLog", (), {"error": hang_forever, "warning": hang_forever})())
    ended = Recorder()

    StopRequests(grace_seconds=0.1, deadline_seconds=0.5, at_deadline=ended, cancel=lambda: 0).received()

    assert ended.called.wait(3)
    assert ended.calls[0] < 0.5 + 0.3 + 0.3


def test_without_a_deadline_the_process_is_left_to_end_on_its_own():
    before = {thread.name for thread in threading.enumerate()}

    StopRequests(grace_seconds=0.01, cancel=lambda: 0).received()

    assert "stop-deadline" not in {thread.name for thread in threading.enumerate()} - before
