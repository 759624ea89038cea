"""The period close's pure parts (jobs/period_close.py): months, their edges, a month's roll-forward and
lines from the ledger's buckets."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from jobs.period_close import (Bucket, first_instant, label, last_day, line_order, lines_of, month_roll_forward,
                               next_month, parse_period, previous_month)


@pytest.mark.parametrize("text, month", [("2026-05", date(2026, 5, 1)), (" 2026-12 ", date(2026, 12, 1)),
                                         ("1900-01", date(1900, 1, 1)), ("2200-12", date(2200, 12, 1))])
def test_a_month_is_yyyy_mm(text, month):
    assert parse_period(text) == month and label(month) == text.strip()


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "2026-5", "26-05", "2026/05", "2026-05-01", "", "1899-12",
                                  "2201-01", "２０２６-05"])
def test_anything_else_is_refused_in_one_line(text):
    with pytest.raises(ValueError) as refused:
        parse_period(text)
    assert "\n" not in str(refused.value)


def test_months_roll_over_the_year_and_end_on_their_last_day():
    assert (next_month(date(2026, 12, 1)), previous_month(date(2026, 1, 1))) == (date(2027, 1, 1), date(2025, 12, 1))
    assert [last_day(date(year, 2, 1)).day for year in (2024, 2026, 2100)] == [29, 28, 28]
    assert first_instant(date(2026, 3, 1)) == datetime(2026, 3, 1, tzinfo=timezone.utc)


def test_a_months_roll_forward_opens_with_every_earlier_bucket_and_signs_its_lines():
    buckets = [Bucket(0, "ADMIN_GRANT", 3, 900, 0), Bucket(1, "REFERRAL_RECURRING", 2, 400, 0),
               Bucket(1, "REDEMPTION_QUOTA", 1, 0, 100), Bucket(2, "REFERRAL_RECURRING", 1, 200, 0),
               Bucket(2, "ADMIN_GRANT", 2, 30, 10), Bucket(2, "EXPIRY", 1, 0, 50),
               Bucket(2, "REFERRAL_CLAWBACK", 1, 0, 20), Bucket(2, "RECOVERY", 1, 0, 5)]

    roll = month_roll_forward(buckets, 2, first_instant(date(2026, 5, 1)))

    assert (roll["opening"], roll["closing"], roll["closing_rows"]) == (1200, 1345, 12)
    assert roll["issued"] == {"ADMIN_GRANT": 30, "REFERRAL_RECURRING": 200}
    assert roll["spent"] == {"ADMIN_GRANT": 10}
    assert (roll["expired"], roll["clawed_back"], roll["recovered"]) == (50, 20, 5)
    assert roll["identity_holds"] and roll["expected_closing"] == 1345 and roll["period_after"].startswith("2026-05-01")
    assert lines_of(roll) == {"opening": 1200, "issued.ADMIN_GRANT": 30, "issued.REFERRAL_RECURRING": 200,
                              "spent.ADMIN_GRANT": -10, "expired": -50, "clawed_back": -20, "recovered": -5,
                              "closing": 1345}
    assert sorted(lines_of(roll), key=line_order) == list(lines_of(roll))
