"""The daemon's database probe: one background question at a time, and a state read without waiting,
whatever the database does (refuses, hangs). (Against a real hanging database, in the daemon:
tests/integration/faults/test_stop_faults.py.)"""
from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
import pytest

from core.db import make_engine
from core.probe import DatabaseProbe
from tests.unit.conftest import NO_DATABASE_URL


@pytest.fixture
def hanging_database(monkeypatch):
    """Every connection attempt hangs until the test ends (a server that accepts and never answers)."""
    released = threading.Event()

    def hang(*_args: Any, **_kwargs: Any) -> None:
        released.wait()
        raise psycopg2.OperationalError("released")

    monkeypatch.setattr(psycopg2, "connect", hang)
    yield
    released.set()


@pytest.fixture
def probe():
    engine = make_engine(NO_DATABASE_URL)
    probes: list[DatabaseProbe] = []

    def make(**bounds: float) -> DatabaseProbe:
        probes.append(DatabaseProbe(engine, **bounds))
        return probes[-1]

    yield make
    for made in probes:
        made.close()
    deadline = time.monotonic() + 5
    while probe_threads() and time.monotonic() < deadline:  # each ends after its question in flight
        time.sleep(0.01)
    engine.dispose()


def probe_threads() -> int:
    return sum(thread.name == "database-probe" for thread in threading.enumerate())


def test_before_its_first_answer_the_database_is_not_checked_yet(probe):
    assert probe().state() == "not checked yet"


def test_a_database_that_refuses_reads_as_unreachable_with_the_drivers_message(probe):
    made = probe()
    made.ask()
    assert made.state() == "unreachable: OperationalError: unit tests have no database (tests/integration/ has)"


def new_threads(before: set[threading.Thread]) -> list[str]:
    return [thread.name for thread in set(threading.enumerate()) - before]


def test_a_hanging_database_reads_as_no_answer_at_once_and_costs_one_thread(probe, hanging_database):
    before = set(threading.enumerate())
    made = probe(interval=0.05, answer_within=0.2).start()
    time.sleep(0.5)

    started = time.monotonic()
    states = [made.state() for _ in range(100)]
    took = time.monotonic() - started

    assert states[-1].startswith("no answer for ")
    assert took < 0.1
    assert new_threads(before) == ["database-probe"]


def test_starting_twice_starts_one_thread(probe, hanging_database):
    before = set(threading.enumerate())
    made = probe()
    made.start()
    made.start()
    assert new_threads(before) == ["database-probe"]
