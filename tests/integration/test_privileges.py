"""docs/privileges.sql: the role the service connects as can run every job (and the daemon), and
cannot change what the rules do not change. Roles are cluster-wide: each test makes its own."""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from core.db import make_engine
from jobs import PIPELINE
from tests.builders import add_app_points, add_payment, add_relationship, new_id, utc
from tests.integration.test_daemon import DaemonProcess, wait_until

PRIVILEGES = Path(__file__).resolve().parents[2] / "docs" / "privileges.sql"
AS_OF = "2026-06-01"


@pytest.fixture
def service_url(database_url: str, server_url: str) -> Iterator[str]:
    """docs/privileges.sql applied (as the owner) under a unique role name; the role's URL."""
    role = f"rewards_jobs_t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    owner = make_engine(database_url, pool_size=1)
    with owner.begin() as conn:
        conn.connection.dbapi_connection.cursor().execute(re.sub(r"\brewards_jobs\b", role, PRIVILEGES.read_text()))
        conn.execute(text(f'ALTER ROLE "{role}" PASSWORD \'{password}\''))
    yield make_url(database_url).set(username=role, password=password).render_as_string(hide_password=False)
    with owner.begin() as conn:
        conn.execute(text(f'DROP OWNED BY "{role}"'))
    owner.dispose()
    admin = make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def add_work_for_every_job(engine: Any) -> dict[str, Any]:
    """Something for each job to change as of 2026-06-01 (defaults: 90 days, 12 months, 10 %, 5 %)."""
    z, a, b, saver, drifted = new_id(), new_id(), new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_relationship(conn, status="PENDING", created_at=utc(2026, 1, 1))  # expire-pending
        add_relationship(conn, referrer=z, referred=a, status="REWARDED", rewarded_at=utc(2026, 1, 5))
        add_relationship(conn, referrer=a, referred=b, status="REWARDED", rewarded_at=utc(2026, 2, 10))
        add_payment(conn, user=b, paid_at=utc(2026, 2, 10))  # month 0: level 2 only
        add_payment(conn, user=b, paid_at=utc(2026, 3, 12))  # month 1: recurring and level 2
        add_app_points(conn, user=saver, delta=500, type="ADMIN_GRANT", created_at=utc(2025, 1, 1))  # expires
        add_app_points(conn, user=drifted, delta=70, type="ADMIN_GRANT", created_at=utc(2026, 5, 1),
                       update_cache=False)  # reconcile finds (and repairs) a missing cache row
    return {"z": z, "a": a, "saver": saver, "drifted": drifted}


@pytest.mark.slow
def test_every_job_and_read_command_runs_as_the_least_privileged_role(service_url, engine, cli):
    users = add_work_for_every_job(engine)
    as_service = {"DATABASE_URL": service_url}

    for job in PIPELINE:
        repair = ["--repair"] if job.name == "reconcile" else []
        done = cli("run", job.name, "--as-of", AS_OF, *repair, env=as_service)
        assert done.returncode == 0, f"{job.name}: {done.stderr}"
    for command in (["health"], ["jobs"], ["history"], ["report", "latest"]):
        done = cli(*command, env=as_service)
        assert done.returncode == 0, f"{command}: {done.stderr}"

    with engine.connect() as conn:
        assert [tuple(row) for row in conn.execute(text("SELECT job, status FROM public.job_runs ORDER BY id"))] == [
            (job.name, "SUCCEEDED") for job in PIPELINE]
        points = dict(conn.execute(text(
            "SELECT user_id, sum(delta) FROM public.user_point_transactions GROUP BY user_id")).all())
        cached = dict(conn.execute(text("SELECT user_id, balance FROM public.user_point_balances")).all())
        expired = conn.execute(text(
            "SELECT count(*) FROM public.user_referral_relationships WHERE status = 'EXPIRED'")).scalar()
    assert expired == 1
    assert (points[users["a"]], points[users["z"]], points[users["saver"]]) == (200, 200, 0)
    assert cached[users["drifted"]] == 70  # repaired


@pytest.mark.parametrize("statement", [
    "DELETE FROM public.user_point_transactions",
    "UPDATE public.user_point_transactions SET delta = 0",
    "UPDATE public.user_referral_relationships SET referrer_user_id = gen_random_uuid()",
    "UPDATE public.user_point_balances SET user_id = gen_random_uuid()",
    "DELETE FROM public.user_point_balances",
    "UPDATE public.job_runs SET as_of = now()",
    "DELETE FROM public.job_runs",
    "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
    " VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'PAID', now())",
    "INSERT INTO public.rewards_schema_migrations (version, name, checksum) VALUES ('999', 'x', 'x')",
    "UPDATE public.reconciliation_runs SET as_of = now()",  # only repaired and summary, by reconcile itself
    "CREATE TABLE public.anything (id int)",
    "ALTER TABLE public.job_runs ADD COLUMN anything int",
    "DROP TABLE public.job_runs",
    "TRUNCATE public.user_point_balances",
])
def test_the_role_cannot_change_what_the_rules_do_not(service_url, statement):
    service = make_engine(service_url, pool_size=1)
    try:
        with pytest.raises(ProgrammingError, match="permission denied|must be owner"), service.begin() as conn:
            conn.execute(text(statement))
    finally:
        service.dispose()


@pytest.mark.slow
def test_the_daemon_runs_as_the_least_privileged_role(service_url, engine, tmp_path):
    add_work_for_every_job(engine)
    daemon = DaemonProcess(service_url, tmp_path)
    try:
        wait_until(lambda: daemon.actions("catch_up_done"), what="the catch-up of every job")
        with engine.connect() as conn:
            statuses = [tuple(row) for row in conn.execute(text("SELECT job, status FROM public.job_runs ORDER BY id"))]
        assert statuses == [(job.name, "SUCCEEDED") for job in PIPELINE]
        daemon.wait_for_http()
        assert daemon.get("/healthz")[0] == 200
        status, metrics = daemon.get("/metrics")
        assert status == 200 and 'rewards_job_last_success_timestamp_seconds{job="reconcile"} 0.0' not in metrics
        assert 'rewards_job_last_success_timestamp_seconds{job="reconcile"}' in metrics
        assert daemon.terminate()[0] == 0
    finally:
        daemon.kill()


def _as_owner(engine, statement: str, **params: Any) -> Any:
    with engine.begin() as conn:
        return conn.execute(text(statement), params).scalar()


FINISHED_RUN = ("INSERT INTO public.job_runs (job, trigger, as_of, status, finished_at, host, pid)"
                " VALUES ('recurring-rewards', 'manual', now(), :status, now(), 'h', 1) RETURNING id")


@pytest.mark.parametrize("statement", [
    FINISHED_RUN.replace(":status", "'SUCCEEDED'"),  # a fake success
    FINISHED_RUN.replace(":status", "'FAILED'"),
    "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
    " VALUES (gen_random_uuid(), 5, 'REFERRAL_RECURRING', 'first-payment:abc')",  # another namespace
    "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
    " VALUES (gen_random_uuid(), 5, 'ADMIN_GRANT', 'recurring:00000000-0000-0000-0000-000000000001:3')",  # wrong type
    "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
    " VALUES (gen_random_uuid(), -5, 'EXPIRY', 'l2:00000000-0000-0000-0000-000000000001:3')",
    "INSERT INTO public.user_point_transactions (user_id, delta, type)"
    " VALUES (gen_random_uuid(), 5, 'REFERRAL_RECURRING')",  # no key at all
])
def test_the_role_writes_only_rows_the_jobs_write(service_url, statement):
    service = make_engine(service_url, pool_size=1)
    try:
        with pytest.raises(ProgrammingError, match="may (insert a run only|write only the jobs' keys)|is a job's"), \
                service.begin() as conn:
            conn.execute(text(statement))
    finally:
        service.dispose()


@pytest.mark.parametrize("ended", ["FAILED", "SUCCEEDED", "ABANDONED", "SKIPPED"])
def test_the_role_cannot_change_a_finished_run(service_url, engine, ended):
    run_id = _as_owner(engine, FINISHED_RUN, status=ended)
    service = make_engine(service_url, pool_size=1)
    try:
        with pytest.raises(ProgrammingError, match="a finished run does not change"), service.begin() as conn:
            conn.execute(text("UPDATE public.job_runs SET status = 'SUCCEEDED', error = NULL WHERE id = :id"),
                         {"id": run_id})
    finally:
        service.dispose()
    assert _as_owner(engine, "SELECT status FROM public.job_runs WHERE id = :id", id=run_id) == ended


def test_the_role_claims_renews_and_finishes_its_own_runs_and_writes_job_keys(service_url):
    service = make_engine(service_url, pool_size=1)
    try:
        with service.begin() as conn:  # as core/runs.py claims: with a claim token, proven again to finish
            conn.execute(text("SELECT set_config('rewards.claim_token', 'the claimer''s secret', true)"))
            run_id = conn.execute(text(
                "INSERT INTO public.job_runs (job, trigger, as_of, status, host, pid)"
                " VALUES ('expire-points', 'manual', now(), 'RUNNING', 'h', 1) RETURNING id")).scalar()
            conn.execute(text("UPDATE public.job_runs SET heartbeat_at = clock_timestamp() WHERE id = :id"), {"id": run_id})
            conn.execute(text("UPDATE public.job_runs SET status = 'SUCCEEDED', finished_at = now() WHERE id = :id"),
                         {"id": run_id})
            user = uuid.uuid4()  # an expiry: key names its own user (migration 025)
            conn.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
                              " VALUES (:u, -5, 'EXPIRY', :key)"), {"u": user, "key": f"expiry:{user}:2026-06-01"})
    finally:
        service.dispose()


def test_the_owner_and_the_app_are_not_bound_by_the_role_rules(service_url, engine):
    run_id = _as_owner(engine, FINISHED_RUN, status="FAILED")
    _as_owner(engine, "UPDATE public.job_runs SET error = 'noted by ops' WHERE id = :id RETURNING id", id=run_id)
    _as_owner(engine, "INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
                      " VALUES (gen_random_uuid(), 50, 'REFERRAL_WELCOME', 'welcome:1') RETURNING 1")


def test_the_role_may_add_and_read_reward_bases_and_update_only_what_became_of_a_reward(service_url, engine):
    role = make_url(service_url).username
    granted = _as_owner(engine, "SELECT array_agg(CAST(privilege_type AS text) ORDER BY privilege_type)"
                                " FROM information_schema.role_table_grants"
                                " WHERE table_name = 'referral_rewards' AND grantee = :role", role=role)
    assert granted == ["INSERT", "SELECT"]
    updatable = _as_owner(engine, "SELECT array_agg(CAST(column_name AS text) ORDER BY column_name)"
                                  " FROM information_schema.column_privileges WHERE table_name = 'referral_rewards'"
                                  " AND grantee = :role AND privilege_type = 'UPDATE'", role=role)
    # what became of a reward (jobs/rewards.sql record_clawbacks, attribute_recoveries), never its basis
    assert updatable == ["clawback_key", "clawback_run_id", "clawed_back_at", "clawed_back_points", "expired_points",
                         "recovered_points", "unrecovered_points"]


@pytest.mark.slow
def test_migrate_as_the_role_is_one_line_with_the_usual_prefix(service_url, cli):
    done = cli("migrate", env={"DATABASE_URL": service_url})

    assert done.returncode == 1
    assert done.stderr.startswith("error: database: permission denied") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and make_url(service_url).password not in done.stderr
