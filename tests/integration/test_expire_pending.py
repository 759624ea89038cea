"""expire-pending: PENDING relationships at or past the expiry window become EXPIRED, nothing else changes."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from core.runner import run_job
from jobs import expire_pending
from tests.builders import add_relationship, new_id, utc

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


def _snapshot(engine, *, except_ids=()) -> list[tuple]:
    """Every column of every relationship (but the given ones), in id order."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT * FROM public.user_referral_relationships WHERE NOT (id = ANY(:skip)) ORDER BY id"
        ), {"skip": list(except_ids)})]


def _run(engine, settings, as_of=AS_OF, **kwargs):
    return run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=as_of, **kwargs)


def test_pending_one_second_past_the_boundary_expires(engine, settings):
    with engine.begin() as conn:
        just_past = add_relationship(conn, created_at=AS_OF - timedelta(days=90, seconds=1))

    _run(engine, settings)

    assert tuple(_status(engine, just_past)) == ("EXPIRED", AS_OF)


def test_expiring_changes_only_status_and_expired_at(engine, settings):
    referrer, referred = new_id(), new_id()
    with engine.begin() as conn:
        due = add_relationship(conn, referrer=referrer, referred=referred, level=2,
                               created_at=utc(2025, 12, 1, 8, 30))
    (before,) = _snapshot(engine)

    _run(engine, settings)

    (after,) = _snapshot(engine)
    with engine.connect() as conn:
        columns = list(conn.execute(text("SELECT * FROM public.user_referral_relationships")).keys())
    changed = {name: (old, new) for name, old, new in zip(columns, before, after) if old != new}
    assert changed == {"status": ("PENDING", "EXPIRED"), "expired_at": (None, AS_OF)}
    assert after[columns.index("id")] == due


def test_other_statuses_are_untouched_whatever_their_age(engine, settings):
    old = utc(2024, 1, 1)
    with engine.begin() as conn:
        add_relationship(conn, status="ACTIVE", created_at=old, activated_at=utc(2024, 1, 5))
        add_relationship(conn, status="REWARDED", created_at=old, activated_at=utc(2024, 1, 5),
                         rewarded_at=utc(2024, 2, 1))
        expired_earlier = add_relationship(conn, status="EXPIRED", created_at=old)
        conn.execute(text("UPDATE public.user_referral_relationships SET expired_at = :at WHERE id = :id"),
                     {"at": utc(2024, 4, 1), "id": expired_earlier})
        due = add_relationship(conn, created_at=old)
    others = _snapshot(engine, except_ids=[due])

    result = _run(engine, settings)

    assert result.stats["relationships_expired"] == 1
    assert _snapshot(engine, except_ids=[due]) == others
    assert tuple(_status(engine, due)) == ("EXPIRED", AS_OF)


def test_expired_at_is_the_exact_as_of_instant(engine, settings):
    as_of = utc(2026, 6, 1, 13, 45, 10)
    with engine.begin() as conn:
        due = add_relationship(conn, created_at=utc(2026, 1, 1))

    _run(engine, settings, as_of=as_of)

    assert tuple(_status(engine, due)) == ("EXPIRED", as_of)


def test_rerun_changes_nothing_even_for_a_later_as_of(engine, settings):
    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2026, 1, 1))
        add_relationship(conn, created_at=utc(2026, 5, 1))
    _run(engine, settings)
    after_first = _snapshot(engine)

    again = _run(engine, settings)
    later = _run(engine, settings, as_of=AS_OF + timedelta(days=1))

    assert (again.stats["relationships_expired"], later.stats["relationships_expired"]) == (0, 0)
    assert _snapshot(engine) == after_first


def test_dry_run_changes_nothing_and_counts_what_a_real_run_then_expires(engine, make_settings):
    settings = make_settings(batch_size=2)
    with engine.begin() as conn:
        for day in range(1, 6):
            add_relationship(conn, created_at=utc(2026, 1, day))
        add_relationship(conn, created_at=utc(2026, 5, 1))
    before = _snapshot(engine)

    dry = _run(engine, settings, dry_run=True)

    assert _snapshot(engine) == before
    assert dry.status == "SUCCEEDED" and dry.stats["dry_run"] is True
    assert dry.stats["relationships_expired"] == 5
    assert _run(engine, settings).stats["relationships_expired"] == 5


def test_pending_expiry_days_setting_is_honoured(engine, make_settings):
    with engine.begin() as conn:
        thirty_days = add_relationship(conn, created_at=AS_OF - timedelta(days=30))
        one_second_short = add_relationship(conn, created_at=AS_OF - timedelta(days=30) + timedelta(seconds=1))

    result = _run(engine, make_settings(pending_expiry_days=30))

    assert result.stats["cutoff"] == "2026-05-02T00:00:00+00:00"
    assert _status(engine, thirty_days).status == "EXPIRED"
    assert _status(engine, one_second_short).status == "PENDING"


def test_small_batches_expire_every_due_row(engine, make_settings):
    with engine.begin() as conn:
        due = [add_relationship(conn, created_at=utc(2025, 12, day)) for day in range(1, 6)]
        young = add_relationship(conn, created_at=utc(2026, 5, 1))

    result = _run(engine, make_settings(batch_size=2))

    assert [_status(engine, rid).status for rid in due] == ["EXPIRED"] * 5
    assert _status(engine, young).status == "PENDING"
    assert result.stats["relationships_expired"] == 5


def test_a_batch_size_that_divides_the_due_rows_expires_them_all(engine, make_settings):
    with engine.begin() as conn:
        due = [add_relationship(conn, created_at=utc(2025, 12, day)) for day in range(1, 5)]

    result = _run(engine, make_settings(batch_size=2))

    assert [_status(engine, rid).status for rid in due] == ["EXPIRED"] * 4
    assert result.stats["relationships_expired"] == 4


def _wait_for_a_lock_waiter(engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity"
                                        " WHERE datname = current_database() AND wait_event_type = 'Lock'")).scalar()
            conn.rollback()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the job never waited for the row lock")


@pytest.mark.slow
def test_relationship_activated_while_the_job_waits_for_its_row_stays_active(engine, settings):
    with engine.begin() as conn:
        relationship = add_relationship(conn, created_at=utc(2026, 1, 1))
    results = []
    app = engine.connect()
    try:
        # The app's transaction holds the row; the job's UPDATE has to wait for it.
        app.execute(text("SELECT 1 FROM public.user_referral_relationships WHERE id = :id FOR UPDATE"),
                    {"id": relationship})
        job = threading.Thread(target=lambda: results.append(_run(engine, settings)))
        job.start()
        _wait_for_a_lock_waiter(engine)
        app.execute(text("UPDATE public.user_referral_relationships SET status = 'ACTIVE', activated_at = :at"
                         " WHERE id = :id"), {"at": utc(2026, 5, 31), "id": relationship})
        app.commit()
        job.join(timeout=30)
    finally:
        app.close()

    assert not job.is_alive()
    assert results[0].status == "SUCCEEDED"
    assert results[0].stats["relationships_expired"] == 0
    assert tuple(_status(engine, relationship)) == ("ACTIVE", None)


# ── from the command line ───────────────────────────────────────────────────────

@pytest.mark.slow
def test_cli_run_prints_a_final_json_line_and_a_rerun_expires_nothing(cli, engine):
    with engine.begin() as conn:
        due = [add_relationship(conn, created_at=utc(2026, 3, 3)), add_relationship(conn, created_at=utc(2025, 7, 1))]
        young = add_relationship(conn, created_at=utc(2026, 3, 3, 0, 0, 1))

    first = cli("run", "expire-pending", "--as-of", "2026-06-01", "--json")
    second = cli("run", "expire-pending", "--as-of", "2026-06-01", "--json")

    assert first.returncode == 0, first.stderr
    final = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(final) == {"job", "run_id", "status", "as_of", "stats"}
    assert (final["job"], final["status"], final["as_of"]) == ("expire-pending", "SUCCEEDED",
                                                               "2026-06-01T00:00:00+00:00")
    assert final["stats"]["relationships_expired"] == 2
    assert [tuple(_status(engine, rid)) for rid in due] == [("EXPIRED", AS_OF)] * 2
    assert _status(engine, young).status == "PENDING"
    assert second.returncode == 0, second.stderr
    rerun = json.loads(second.stdout.strip().splitlines()[-1])
    assert rerun["stats"]["relationships_expired"] == 0
    assert rerun["run_id"] == final["run_id"] + 1


@pytest.mark.slow
def test_cli_run_without_json_ends_with_a_human_summary(cli, engine):
    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2025, 7, 1))

    result = cli("run", "expire-pending", "--as-of", "2026-06-01", "--dry-run")

    assert result.returncode == 0, result.stderr
    summary = result.stdout
    assert summary.startswith("expire-pending SUCCEEDED (dry run)")
    assert "as of 2026-06-01 00:00:00Z" in summary
    assert "1 relationships expired" in summary and "dry run, nothing changed" in summary
