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
from tests.test_daemon import DaemonProcess, wait_until

PRIVILEGES = Path(__file__).resolve().parent.parent / "docs" / "privileges.sql"
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
    "UPDATE public.reconciliation_runs SET repaired = 0",
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
