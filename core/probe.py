"""Whether the database answers, for the daemon's `/healthz`, without a health check ever waiting on it.

One background thread asks `SELECT 1` every `interval` seconds, on a connection pool of its own (a
busy pool of the jobs never delays it); `state()` reads its latest answer. However the database
misbehaves (it refuses, hangs mid-statement, accepts TCP and never speaks), a probe of `/healthz`
costs no thread and no wait, and at most one question is in flight. A question unanswered for more
than `answer_within` seconds reads as "no answer for N s": unhealthy.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from sqlalchemy import Engine, create_engine, text

from core.text import one_line

PROBE_INTERVAL_SECONDS = 1.0
ANSWER_WITHIN_SECONDS = 2.0
OK = "ok"


class _Answer(NamedTuple):
    state: str
    at: float


class DatabaseProbe:
    def __init__(self, engine: Engine, *, interval: float = PROBE_INTERVAL_SECONDS,
                 answer_within: float = ANSWER_WITHIN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        # The same URL, connect arguments and session options as `engine`, in a pool of its own.
        self._engine = create_engine(engine.url, pool=engine.pool.recreate())
        self.interval, self.answer_within, self._clock = interval, answer_within, clock
        self._answer: _Answer | None = None
        self._asked_at: float | None = None  # while a question is in flight
        self._started = False
        self._closed = threading.Event()

    def start(self) -> DatabaseProbe:
        if not self._started:
            self._started = True
            threading.Thread(target=self._ask_until_closed, name="database-probe", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop asking; the pool goes with the background thread, once its question in flight is done."""
        self._closed.set()
        if not self._started:
            self._engine.dispose()

    def state(self) -> str:
        """`ok`, `unreachable: …` (the latest answer was an error), `no answer for N s`, or, before
        the first answer, `not checked yet`."""
        asked_at = self._asked_at
        if asked_at is not None and (silent := self._clock() - asked_at) > self.answer_within:
            return f"no answer for {silent:.0f} s"
        return self._answer.state if self._answer else "not checked yet"

    def ask(self) -> str:
        """Ask once, now, in this thread (the background thread's question; tests ask directly)."""
        self._asked_at = self._clock()
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            state = OK
        except Exception as error:  # whatever it is, the database did not answer
            state = "unreachable: " + one_line(error, driver_message=True)
        self._answer, self._asked_at = _Answer(state, self._clock()), None
        return state

    def _ask_until_closed(self) -> None:
        try:
            while not self._closed.is_set():
                self.ask()
                self._closed.wait(self.interval)
        finally:
            self._engine.dispose()
