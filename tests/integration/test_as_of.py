"""`--as-of` through a real process, and the database sessions' time zone (parsing: tests/unit/test_as_of.py)."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.builders import utc


@pytest.mark.slow
def test_cli_runs_the_job_as_of_the_converted_instant(cli):
    result = cli("run", "expire-pending", "--as-of", "2026-06-01T02:00:00+02:00", "--dry-run", "--json")

    assert result.returncode == 0, result.stderr
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["as_of"] == "2026-06-01T00:00:00+00:00"
    assert final["stats"]["cutoff"] == "2026-03-03T00:00:00+00:00"  # 90 days before


def test_database_sessions_run_in_utc(engine):
    with engine.connect() as conn:
        assert conn.execute(text("SHOW TimeZone")).scalar() == "UTC"
        assert conn.execute(text("SELECT CAST(:at AS timestamptz)::text"),
                            {"at": utc(2026, 6, 1, 1, 30)}).scalar() == "2026-06-01 01:30:00+00"
        assert conn.execute(text("SELECT date_trunc('day', CAST(:at AS timestamptz))"),
                            {"at": utc(2026, 6, 1, 23, 30)}).scalar() == utc(2026, 6, 1)
