"""job_runs: one RUNNING run per job, one claim per scheduled tick, lease takeover, the heartbeat fence of
every batch, and how a run ends (SUCCEEDED, FAILED, stopped, ABANDONED) with its settings and stats."""
from __future__ import annotations

import json
import os
import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from core import runs
from core.connect import reading
from core.job import Batch, Job, RunContext
from core.runner import run_job
from core.runs import HOST, AlreadyRunning, LeaseLost, TickTaken
from jobs import expire_pending
from tests.builders import add_relationship, utc

AS_OF = utc(2026, 6, 1)
TICK = utc(2026, 6, 1, 0, 5)
LEASE = 300


def _claim(engine, job: str = "expire-pending", *, scheduled_for=None, trigger: str = "manual",
           settings: dict[str, Any] | None = None) -> int:
    return runs.claim(engine, job=job, trigger=trigger, as_of=AS_OF, scheduled_for=scheduled_for,
                      dry_run=False, settings=settings or {}, lease_seconds=LEASE)


def _run_row(engine, run_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(text("SELECT * FROM public.job_runs WHERE id = :id"), {"id": run_id}).one()


def _statuses(engine, job: str) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT id, status FROM public.job_runs WHERE job = :job ORDER BY id"), {"job": job})]


def _heartbeat_seconds_ago(engine, run_id: int, seconds: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.job_runs SET heartbeat_at = clock_timestamp() - make_interval(secs => :s)"
                          " WHERE id = :id"), {"s": seconds, "id": run_id})


@pytest.fixture
def marks(engine):
    """A table where a test job notes each batch it committed."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE public.batch_marks (batch int NOT NULL)"))

    def committed() -> list[int]:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT batch FROM public.batch_marks ORDER BY batch"))]

    return committed


def _marking_job(batches: int, *, fail_in_batch: int | None = None) -> Job:
    """A job of `batches` batches; each notes its number, and `fail_in_batch` raises after noting it."""

    def run(ctx: RunContext) -> None:
        def step(conn, after):
            number = (after or 0) + 1
            conn.execute(text("INSERT INTO public.batch_marks VALUES (:n)"), {"n": number})
            if number == fail_in_batch:
                raise RuntimeError(f"batch {number} broke\nsecond line of the message")
            return Batch(next_after=number if number < batches else None, items=1)

        ctx.batches(step, total=batches)

    return Job(name="test-job", run=run)


# ── claiming ────────────────────────────────────────────────────────────────────

def test_claim_records_a_running_row_with_host_pid_and_settings(engine):
    run_id = _claim(engine, settings={"REWARDS_PENDING_EXPIRY_DAYS": "90"})

    row = _run_row(engine, run_id)
    assert (row.job, row.trigger, row.status, row.as_of, row.scheduled_for, row.dry_run) == \
        ("expire-pending", "manual", "RUNNING", AS_OF, None, False)
    assert (row.host, row.pid) == (HOST, os.getpid())
    assert row.settings == {"REWARDS_PENDING_EXPIRY_DAYS": "90"}
    assert row.finished_at is None and row.error is None


def test_second_claim_of_a_running_job_names_its_host_pid_and_since(engine):
    first = _claim(engine)
    started_at = _run_row(engine, first).started_at

    with pytest.raises(AlreadyRunning) as busy:
        _claim(engine)

    assert busy.value.holder == runs.Holder(first, HOST, os.getpid(), started_at, "manual")
    assert str(busy.value) == (f"expire-pending is already running elsewhere: run {first} (manual) "
                               f"on host {HOST} pid {os.getpid()}, since {started_at.isoformat()}")
    assert _statuses(engine, "expire-pending") == [(first, "RUNNING")]


def test_a_running_job_does_not_hold_another_job(engine):
    first = _claim(engine, "expire-pending")
    second = _claim(engine, "reconcile")

    assert _statuses(engine, "expire-pending") == [(first, "RUNNING")]
    assert _statuses(engine, "reconcile") == [(second, "RUNNING")]


def test_a_finished_run_frees_the_job(engine):
    first = _claim(engine)
    assert runs.finish(engine, first, status="SUCCEEDED", stats={}, error=None)

    second = _claim(engine)

    assert _statuses(engine, "expire-pending") == [(first, "SUCCEEDED"), (second, "RUNNING")]


def test_run_job_of_a_busy_job_records_a_skipped_row_and_raises(engine, settings):
    holder = _claim(engine)

    with pytest.raises(AlreadyRunning) as busy:
        run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=AS_OF)

    skipped = _statuses(engine, "expire-pending")[-1]
    assert skipped[1] == "SKIPPED"
    row = _run_row(engine, skipped[0])
    assert row.error == str(busy.value) and row.finished_at is not None
    assert row.settings == {"REWARDS_PENDING_EXPIRY_DAYS": "90", "REWARDS_BATCH_SIZE": "5000"}
    assert _run_row(engine, holder).status == "RUNNING"


# ── the lease ───────────────────────────────────────────────────────────────────

def test_a_run_silent_for_longer_than_the_lease_is_taken_over_and_marked_abandoned(engine):
    stale = _claim(engine)
    _heartbeat_seconds_ago(engine, stale, LEASE + 1)

    fresh = _claim(engine)

    assert _statuses(engine, "expire-pending") == [(stale, "ABANDONED"), (fresh, "RUNNING")]
    row = _run_row(engine, stale)
    assert row.finished_at is not None
    assert row.error.startswith("lease expired: no heartbeat since ")
    assert f"taken over by {HOST} pid {os.getpid()}" in row.error


def test_a_run_within_its_lease_is_not_taken_over(engine):
    holder = _claim(engine)
    _heartbeat_seconds_ago(engine, holder, LEASE - 10)

    with pytest.raises(AlreadyRunning):
        _claim(engine)

    assert _statuses(engine, "expire-pending") == [(holder, "RUNNING")]


def test_heartbeat_of_a_taken_over_run_raises_lease_lost_and_its_finish_changes_nothing(engine):
    stale = _claim(engine)
    _heartbeat_seconds_ago(engine, stale, LEASE + 1)
    _claim(engine)

    with pytest.raises(LeaseLost):
        with engine.begin() as conn:
            runs.heartbeat(conn, stale, {"batches": 1})
    assert runs.finish(engine, stale, status="SUCCEEDED", stats={}, error=None) is False
    assert _run_row(engine, stale).status == "ABANDONED"


def test_a_run_that_lost_its_lease_cannot_commit_its_next_batch(engine, settings, marks):
    taken_over_by: list[int] = []

    def another_process_takes_over(*, batches: int, **_: Any) -> None:
        if batches == 1:  # between batch 1 and batch 2, as if this process had hung past its lease
            with engine.begin() as conn:
                conn.execute(text("UPDATE public.job_runs SET heartbeat_at = heartbeat_at - interval '1 hour'"
                                  " WHERE job = 'test-job' AND status = 'RUNNING'"))
            taken_over_by.append(_claim(engine, "test-job"))

    result = run_job(_marking_job(3), settings=settings, engine=engine, as_of=AS_OF,
                     progress=another_process_takes_over)

    assert marks() == [1]
    assert result.status == "ABANDONED"
    assert result.error.startswith("LeaseLost: ")
    assert _statuses(engine, "test-job") == [(result.run_id, "ABANDONED"), (taken_over_by[0], "RUNNING")]
    assert _run_row(engine, result.run_id).error.startswith("lease expired")


def test_each_batch_renews_the_lease_and_saves_the_stats_so_far(engine, settings, marks):
    seen: list[tuple[int, Any, bool]] = []

    def look_at_the_run_row(*, batches: int, **_: Any) -> None:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT stats, clock_timestamp() - heartbeat_at AS age FROM public.job_runs"
                                    " WHERE job = 'test-job'")).one()
        seen.append((batches, row.stats.get("batches", 0), row.age < timedelta(seconds=5)))

    result = run_job(_marking_job(3), settings=settings, engine=engine, as_of=AS_OF, progress=look_at_the_run_row)

    assert result.status == "SUCCEEDED"
    # Each batch's stats commit with its rows: once a batch is committed, the row counts it.
    assert seen == [(1, 1, True), (2, 2, True), (3, 3, True)]


# ── scheduled ticks ─────────────────────────────────────────────────────────────

def test_a_tick_that_succeeded_cannot_be_claimed_again(engine):
    first = _claim(engine, scheduled_for=TICK, trigger="schedule")
    runs.finish(engine, first, status="SUCCEEDED", stats={}, error=None)

    with pytest.raises(TickTaken, match="expire-pending tick 2026-06-01T00:05:00"):
        _claim(engine, scheduled_for=TICK, trigger="schedule")

    assert _statuses(engine, "expire-pending") == [(first, "SUCCEEDED")]


def test_a_tick_running_on_another_replica_is_taken_not_busy(engine):
    first = _claim(engine, scheduled_for=TICK, trigger="schedule")

    with pytest.raises(TickTaken):
        _claim(engine, scheduled_for=TICK, trigger="schedule")

    assert _statuses(engine, "expire-pending") == [(first, "RUNNING")]


def test_the_next_tick_while_the_previous_one_runs_is_busy(engine):
    _claim(engine, scheduled_for=TICK, trigger="schedule")

    with pytest.raises(AlreadyRunning):
        _claim(engine, scheduled_for=TICK + timedelta(days=1), trigger="schedule")


@pytest.mark.parametrize("ended", ["FAILED", "ABANDONED"])
def test_a_tick_that_failed_or_was_abandoned_can_be_claimed_again(engine, ended):
    first = _claim(engine, scheduled_for=TICK, trigger="schedule")
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.job_runs SET status = :s WHERE id = :id"), {"s": ended, "id": first})

    second = _claim(engine, scheduled_for=TICK, trigger="catch-up")

    assert _statuses(engine, "expire-pending") == [(first, ended), (second, "RUNNING")]


def test_run_job_of_a_taken_tick_raises_tick_taken_and_records_nothing(engine, settings):
    first = _claim(engine, scheduled_for=TICK, trigger="schedule")
    runs.finish(engine, first, status="SUCCEEDED", stats={}, error=None)

    with pytest.raises(TickTaken):
        run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=TICK, trigger="schedule",
                scheduled_for=TICK)

    assert _statuses(engine, "expire-pending") == [(first, "SUCCEEDED")]


# ── how a run ends ──────────────────────────────────────────────────────────────

def test_a_job_that_raises_ends_failed_with_a_one_line_error_and_keeps_its_earlier_batches(
        engine, settings, marks):
    result = run_job(_marking_job(3, fail_in_batch=2), settings=settings, engine=engine, as_of=AS_OF)

    assert result.status == "FAILED"
    assert result.error == "RuntimeError: batch 2 broke"
    assert marks() == [1]  # batch 2 rolled back with its failure
    row = _run_row(engine, result.run_id)
    assert (row.status, row.error) == ("FAILED", "RuntimeError: batch 2 broke")
    assert row.finished_at is not None
    assert row.stats["batches"] == 1


def test_a_stop_request_ends_the_run_after_its_current_batch(engine, settings, marks):
    stop = threading.Event()

    def stop_after_the_first_batch(*, batches: int, **_: Any) -> None:
        stop.set()  # what SIGTERM does

    result = run_job(_marking_job(3), settings=settings, engine=engine, as_of=AS_OF, stop=stop,
                     progress=stop_after_the_first_batch)

    assert marks() == [1]
    assert result.status == "FAILED"
    assert result.error.startswith("stopped on request after 1 batches")
    assert _run_row(engine, result.run_id).status == "FAILED"
    assert _claim(engine, "test-job")  # the job is free for the next run


def test_a_run_records_its_settings_and_stats(engine, make_settings):
    settings = make_settings(pending_expiry_days=30, batch_size=2)
    with engine.begin() as conn:
        for days in (30, 31, 40):
            add_relationship(conn, created_at=AS_OF - timedelta(days=days))
        add_relationship(conn, created_at=AS_OF - timedelta(days=29))

    result = run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=AS_OF)

    row = _run_row(engine, result.run_id)
    assert (row.status, row.trigger, row.as_of, row.dry_run, row.error) == \
        ("SUCCEEDED", "manual", AS_OF, False, None)
    assert row.settings == {"REWARDS_PENDING_EXPIRY_DAYS": "30", "REWARDS_BATCH_SIZE": "2"}
    assert row.stats["relationships_expired"] == 3
    assert (row.stats["batches"], row.stats["items"]) == (2, 3)  # 2 + 1
    assert row.stats["cutoff"] == (AS_OF - timedelta(days=30)).isoformat()
    assert row.finished_at >= row.started_at
    assert result.stats == row.stats


def test_a_dry_run_is_recorded_as_one(engine, settings):
    result = run_job(expire_pending.JOB, settings=settings, engine=engine, as_of=AS_OF, dry_run=True)

    row = _run_row(engine, result.run_id)
    assert (row.status, row.dry_run, row.stats["dry_run"]) == ("SUCCEEDED", True, True)


def test_the_last_run_of_each_job_is_its_latest(engine):
    ids = []
    for job in ("expire-pending", "reconcile", "expire-pending"):
        run_id = _claim(engine, job)
        runs.finish(engine, run_id, status="SUCCEEDED", stats={}, error=None)
        ids.append(run_id)

    with reading(engine) as fetch:
        last = runs.last_runs(fetch)

    assert {job: run.id for job, run in last.items()} == {"expire-pending": ids[2], "reconcile": ids[1]}


# ── through the command line ────────────────────────────────────────────────────

def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_cli_run_of_a_busy_job_exits_3_naming_the_holder_and_records_skipped(cli, engine):
    holder = _claim(engine)
    started_at = _run_row(engine, holder).started_at

    result = cli("run", "expire-pending", "--as-of", "2026-06-01")

    assert result.returncode == 3
    assert _one_line(result.stderr) == (
        f"expire-pending is already running elsewhere: run {holder} (manual) on host {HOST} "
        f"pid {os.getpid()}, since {started_at.isoformat()}")
    skipped_id, status = _statuses(engine, "expire-pending")[-1]
    assert status == "SKIPPED"
    assert _run_row(engine, skipped_id).error == _one_line(result.stderr)


def test_cli_run_of_a_failing_job_exits_1_and_records_the_error(cli, engine):
    with engine.begin() as conn:
        add_relationship(conn, created_at=utc(2025, 1, 1))
        conn.execute(text(
            "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'relationships are frozen'; END $$;"
            " CREATE TRIGGER frozen BEFORE UPDATE ON public.user_referral_relationships"
            " FOR EACH ROW EXECUTE FUNCTION public.refuse();"))

    result = cli("run", "expire-pending", "--as-of", "2026-06-01", "--json")

    assert result.returncode == 1
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["status"] == "FAILED"
    row = _run_row(engine, final["run_id"])
    assert row.status == "FAILED"
    assert "relationships are frozen" in row.error and "\n" not in row.error
