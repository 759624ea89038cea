"""The one set of time and text helpers (core/clock.py, core/text.py): no database."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError

from core.clock import utc_iso, when
from core.text import one_line

SUMMER = datetime(2026, 6, 1, 1, 2, 3, tzinfo=timezone.utc)


def test_utc_iso_converts_an_offset_to_utc():
    plus_two = SUMMER.astimezone(timezone(timedelta(hours=2)))

    assert utc_iso(plus_two) == "2026-06-01T01:02:03+00:00"


@pytest.mark.parametrize("moment, options, expected", [
    (SUMMER, {}, "2026-06-01 01:02:03Z"),
    (SUMMER, {"seconds": False}, "2026-06-01 01:02"),
    (SUMMER, {"zone": " UTC"}, "2026-06-01 01:02:03 UTC"),
    ("2026-06-01T03:02:03+02:00", {}, "2026-06-01 01:02:03Z"),
    (SUMMER.astimezone(timezone(timedelta(hours=-5))), {}, "2026-06-01 01:02:03Z"),
    (SUMMER.replace(tzinfo=None), {}, "2026-06-01 01:02:03Z"),  # a naive instant is taken as UTC
    (None, {}, ""),
])
def test_when_writes_an_instant_in_utc_as_people_read_it(moment, options, expected):
    assert when(moment, **options) == expected


def test_one_line_keeps_the_type_and_the_first_line_only():
    assert one_line(ValueError("first\nsecond")) == "ValueError: first"
    assert one_line(RuntimeError()) == "RuntimeError:"


def test_one_line_of_a_database_error_can_read_the_drivers_own_message():
    error = OperationalError("SELECT 1", {}, ConnectionError("server closed the connection\nDETAIL: x"))

    assert one_line(error).startswith("OperationalError: (builtins.ConnectionError) server closed")
    assert one_line(error, driver_message=True) == "OperationalError: server closed the connection"
