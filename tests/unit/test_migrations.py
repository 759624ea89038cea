"""The migrations on disk. (Applying them: tests/integration/test_migrations.py.)"""
from __future__ import annotations

from core.migrations import MIGRATIONS_DIR

ON_DISK = sorted(path.name for path in MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))
FILE_011 = "011_user_referrals_and_points.sql"
FILE_012 = "012_payments_idempotency_job_runs.sql"


def test_the_first_migrations_on_disk_are_011_and_012():
    assert ON_DISK[:2] == [FILE_011, FILE_012]
