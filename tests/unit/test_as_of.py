"""`--as-of`: ISO-8601 to a UTC instant; a bare date is 00:00 UTC, a time without offset is UTC, an
offset is converted; anything else is bad usage (exit 2, one line naming --as-of)."""
from __future__ import annotations

import re
from datetime import timezone

import pytest

from core.clock import parse_as_of
from tests.builders import utc


@pytest.mark.parametrize("text, expected", [
    ("2026-06-01", utc(2026, 6, 1)),
    (" 2026-06-01 ", utc(2026, 6, 1)),
    ("2028-02-29", utc(2028, 2, 29)),
    ("2026-06-01T12:30:00Z", utc(2026, 6, 1, 12, 30)),
    ("2026-06-01T12:30:00+00:00", utc(2026, 6, 1, 12, 30)),
    ("2026-06-01T12:30:00+02:00", utc(2026, 6, 1, 10, 30)),
    ("2026-06-01T01:00:00-05:00", utc(2026, 6, 1, 6, 0)),
    ("2026-06-01T23:30:00-01:00", utc(2026, 6, 2, 0, 30)),
    ("2026-06-01T00:30:00+05:30", utc(2026, 5, 31, 19, 0)),
    ("2026-06-01T12:30:00", utc(2026, 6, 1, 12, 30)),
    ("2026-06-01 12:30", utc(2026, 6, 1, 12, 30)),
], ids=lambda value: str(value))
def test_accepted_forms_give_the_utc_instant(text, expected):
    instant = parse_as_of(text)

    assert instant == expected
    assert instant.tzinfo == timezone.utc
    assert instant.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("text, expected", [
    ("1900-01-01", utc(1900, 1, 1)),
    ("2200-12-31T23:59:59Z", utc(2200, 12, 31, 23, 59, 59)),
    ("2201-01-01T00:30:00+01:00", utc(2200, 12, 31, 23, 30)),
])
def test_as_ofs_from_1900_to_2200_are_accepted(text, expected):
    assert parse_as_of(text) == expected


def test_fractions_of_a_second_are_kept():
    assert parse_as_of("2026-06-01T12:30:00.250Z").microsecond == 250_000


@pytest.mark.parametrize("text", [
    "", "   ", "garbage", "yesterday", "06/01/2026", "2026-06-01T00:00:00 UTC",
    "2026-02-30", "2027-02-29", "2026-13-01", "2026-00-10", "2026-06-01T25:00", "2026-06-01T12:60",
    "2026-06-01T12:00:00+25:00",
    "1899-12-31", "0001-01-01T00:00:00+01:00", "2201-01-01", "9999-01-01", "9999-12-31T23:59:59-01:00",
])
def test_garbage_impossible_and_far_off_dates_are_refused(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_as_of(text)

# ── through the command line (in this process) ──────────────────────────────────

@pytest.mark.parametrize("command, when", [
    ("run", "garbage"),
    ("run", "2026-02-30"),
    ("run", ""),
    ("run", "1899-12-31"),
    ("run", "9999-01-01"),
    ("run-all", "2026-13-01"),
    ("run-all", "2201-01-01"),
], ids=lambda value: str(value) or "empty")
def test_cli_refuses_a_bad_as_of_with_exit_2_and_one_line_naming_it(main_in_process, command, when):
    args = [command, "expire-pending"] if command == "run" else [command]

    code, out, err = main_in_process(*args, "--as-of", when)

    assert code == 2 and out == ""
    assert err.startswith("error: --as-of: ") and err.count("\n") == 1, err
