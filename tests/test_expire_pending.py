"""expire-pending: PENDING relationships at or past the expiry window become EXPIRED, nothing else changes."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from core.runner import run_job
from jobs import expire_pending
from tests.builders import add_relationship, utc

AS_OF = utc(2026, 6, 1)


def _status(engine, relationship_id):
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT status, expired_at FROM public.user_referral_relationships WHERE id = :id"
        ), {"id": relationship_id}).one()


def test_pending_exactly_90_days_old_expires_and_one_second_younger_does_not(engine, settings):
    with engine.begin() as conn:
        at_boundary = add_relationship(conn, created_at=AS_OF - timedelta(days=90))
        just_inside = add_relationship(conn, created_at=AS_OF - timedelta(days=90) + timedelta(seconds=1))

    result = run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=AS_OF)

    assert result.status == "SUCCEEDED"
    assert tuple(_status(engine, at_boundary)) == ("EXPIRED", AS_OF)
    assert tuple(_status(engine, just_inside)) == ("PENDING", None)
    assert result.stats["relationships_expired"] == 1
