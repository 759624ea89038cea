"""Recorded facts are append-only for the service role (issue 28 item 3; migration 025, docs/privileges.sql).

As the least-privileged role of docs/privileges.sql: every job runs (the six of the pipeline, a reward
run after a refund that claws back, reconcile --repair, a takeover of a stale run and of a dead one),
then every statement below that would rewrite, delete or forge what finance reads is refused
(insufficient_privilege, SQLSTATE 42501), and the tables read the same afterwards."""
from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import InternalError, NotSupportedError, ProgrammingError

from core import runs
from core.db import make_engine
from core.runner import run_job
from jobs import PIPELINE, reconcile, recurring_rewards
from tests.builders import add_app_points, new_id, utc
from tests.integration.test_privileges import add_work_for_every_job, service_url  # noqa: F401 (fixture)

AS_OF = utc(2026, 6, 1)
LATER = utc(2026, 6, 2)
TABLES = ("job_runs", "reconciliation_runs", "reconciliation_discrepancies", "reconciliation_findings",
          "referral_rewards", "user_point_transactions", "user_point_balances", "user_referral_relationships",
          "user_subscription_payments", "rewards_schema_migrations")

# Rows the statements aim at (each statement must hit at least one row, or it would "succeed" on none).
RECONCILE = "(SELECT max(run_id) FROM public.reconciliation_runs)"
SUCCEEDED = "(SELECT min(id) FROM public.job_runs WHERE status = 'SUCCEEDED')"
ABANDONED = "(SELECT min(id) FROM public.job_runs WHERE status = 'ABANDONED')"
OTHER_RUN = "(SELECT min(id) FROM public.job_runs WHERE job = 'expire-pending')"
RUNNING = "(SELECT id FROM public.job_runs WHERE status = 'RUNNING' AND job = 'expire-points')"
RUNNING_RECONCILE = "(SELECT id FROM public.job_runs WHERE status = 'RUNNING' AND job = 'reconcile')"
STANDING = "(SELECT min(idempotency_key) FROM public.referral_rewards WHERE clawback_key IS NULL)"
CLAWED = "(SELECT min(idempotency_key) FROM public.referral_rewards WHERE clawback_key IS NOT NULL)"
REL = "(SELECT CAST(min(CAST(id AS text)) AS uuid) FROM public.user_referral_relationships WHERE status = 'REWARDED')"
USER = "(SELECT CAST(min(CAST(user_id AS text)) AS uuid) FROM public.user_point_balances)"
NOBODY = "CAST('00000000-0000-0000-0000-00000000dead' AS uuid)"  # (Citus refuses a volatile function in an UPDATE)


def _ledger_row(delta: int, type_: str, key: str, *, ref: str = "NULL", user: str = USER) -> str:
    return (f"INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key)"
            f" SELECT {user}, {delta}, '{type_}', {ref}, {key}")


def _reward_key(prefix: str, month: int = 3) -> str:
    return f"'{prefix}:' || {REL} || ':{month}'"


FORBIDDEN = {
    # ── reconciliation runs: what finance reads ─────────────────────────────
    "past summary rewritten": f"UPDATE public.reconciliation_runs SET summary = '{{}}' WHERE run_id = {RECONCILE}",
    "past repaired rewritten": f"UPDATE public.reconciliation_runs SET repaired = 999 WHERE run_id = {RECONCILE}",
    "past run touched (no change)": f"UPDATE public.reconciliation_runs SET repaired = repaired WHERE run_id = {RECONCILE}",
    "past run's as-of": f"UPDATE public.reconciliation_runs SET as_of = now() WHERE run_id = {RECONCILE}",
    "past run's totals": f"UPDATE public.reconciliation_runs SET ledger_balance = 0 WHERE run_id = {RECONCILE}",
    "past run deleted": f"DELETE FROM public.reconciliation_runs WHERE run_id = {RECONCILE}",
    "run row forged for another job's run":
        "INSERT INTO public.reconciliation_runs (run_id, as_of, users_checked, ledger_rows, discrepancies,"
        " ledger_balance, ledger_earned, ledger_spent, cache_balance, cache_earned, cache_spent, net_drift,"
        f" closing_balance, summary) SELECT {OTHER_RUN}, now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '{{}}'",
    "run row forged for a running reconcile, outside its lease":
        "INSERT INTO public.reconciliation_runs (run_id, as_of, users_checked, ledger_rows, discrepancies,"
        " ledger_balance, ledger_earned, ledger_spent, cache_balance, cache_earned, cache_spent, net_drift,"
        f" closing_balance, summary) SELECT {RUNNING_RECONCILE}, now(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, '{{}}'",
    "reconciliation runs truncated": "TRUNCATE public.reconciliation_runs CASCADE",
    # ── discrepancies ────────────────────────────────────────────────────────
    "past discrepancy rewritten": f"UPDATE public.reconciliation_discrepancies SET drift = 0 WHERE run_id = {RECONCILE}",
    "past discrepancy deleted": f"DELETE FROM public.reconciliation_discrepancies WHERE run_id = {RECONCILE}",
    "discrepancy added to a past run":
        "INSERT INTO public.reconciliation_discrepancies (run_id, user_id, kinds, ledger_balance, drift,"
        f" ledger_total_earned, ledger_total_spent) SELECT {RECONCILE}, gen_random_uuid(), ARRAY['X'], 0, 0, 0, 0",
    "discrepancy added to a running reconcile, outside its lease":
        "INSERT INTO public.reconciliation_discrepancies (run_id, user_id, kinds, ledger_balance, drift,"
        f" ledger_total_earned, ledger_total_spent) SELECT {RUNNING_RECONCILE}, gen_random_uuid(), ARRAY['X'], 0, 0, 0, 0",
    "discrepancies truncated": "TRUNCATE public.reconciliation_discrepancies",
    # ── findings ─────────────────────────────────────────────────────────────
    "past finding rewritten": f"UPDATE public.reconciliation_findings SET detail = 'fine' WHERE run_id = {RECONCILE}",
    "past finding deleted": f"DELETE FROM public.reconciliation_findings WHERE run_id = {RECONCILE}",
    "finding added to a past run":
        "INSERT INTO public.reconciliation_findings (run_id, number, kind, detail)"
        f" SELECT {RECONCILE}, 999, 'EXPIRY_INVARIANT', 'x'",
    "finding added to a running reconcile, outside its lease":
        "INSERT INTO public.reconciliation_findings (run_id, number, kind, detail)"
        f" SELECT {RUNNING_RECONCILE}, 999, 'EXPIRY_INVARIANT', 'x'",
    "findings truncated": "TRUNCATE public.reconciliation_findings",
    # ── referral_rewards: the recorded basis ─────────────────────────────────
    **{f"reward's {column} rewritten": f"UPDATE public.referral_rewards SET {column} = {value}"
                                        f" WHERE idempotency_key = {STANDING}"
       for column, value in (("points", "1"), ("basis_amount_cents", "0"), ("basis_paid_at", "now()"),
                             ("referred_user_id", NOBODY), ("beneficiary_user_id", NOBODY),
                             ("payment_id", NOBODY), ("relationship_id", NOBODY),
                             ("month", "month + 1"), ("level", "3 - level"), ("run_id", "NULL"),
                             ("rewarded_at", "now()"), ("idempotency_key", "idempotency_key || 'x'"))},
    "clawback undone": "UPDATE public.referral_rewards SET clawback_key = NULL, clawed_back_at = NULL,"
                       " clawback_run_id = NULL, clawed_back_points = 0, expired_points = 0, unrecovered_points = 0,"
                       f" recovered_points = 0 WHERE idempotency_key = {CLAWED}",
    "clawback's parts shifted": "UPDATE public.referral_rewards SET clawed_back_points = 0,"
                                f" unrecovered_points = points - expired_points WHERE idempotency_key = {CLAWED}",
    "clawback re-dated": f"UPDATE public.referral_rewards SET clawed_back_at = now() WHERE idempotency_key = {CLAWED}",
    "clawback under a foreign key": "UPDATE public.referral_rewards SET clawback_key = 'clawback:other',"
                                    " clawed_back_at = now(), unrecovered_points = points"
                                    f" WHERE idempotency_key = {STANDING}",
    "standing reward dated as clawed back": "UPDATE public.referral_rewards SET clawback_run_id = 1"
                                            f" WHERE idempotency_key = {STANDING}",
    "reward record deleted": f"DELETE FROM public.referral_rewards WHERE idempotency_key = {STANDING}",
    "reward recorded already clawed back":
        "INSERT INTO public.referral_rewards (idempotency_key, relationship_id, level, month, payment_id,"
        " beneficiary_user_id, points, rewarded_at, clawback_key, clawed_back_at, unrecovered_points)"
        " VALUES ('recurring:x:1', gen_random_uuid(), 1, 1, gen_random_uuid(), gen_random_uuid(), 5, now(),"
        " 'clawback:recurring:x:1', now(), 5)",
    "reward records truncated": "TRUNCATE public.referral_rewards",
    # ── job_runs: finished runs and forgeries ───────────────────────────────
    "finished run's stats": f"UPDATE public.job_runs SET stats = '{{}}' WHERE id = {SUCCEEDED}",
    "finished run's error": f"UPDATE public.job_runs SET error = 'x' WHERE id = {SUCCEEDED}",
    "finished run's end": f"UPDATE public.job_runs SET finished_at = now() WHERE id = {SUCCEEDED}",
    "success turned failure": f"UPDATE public.job_runs SET status = 'FAILED' WHERE id = {SUCCEEDED}",
    "abandoned run turned success": f"UPDATE public.job_runs SET status = 'SUCCEEDED' WHERE id = {ABANDONED}",
    "finished run's as-of": f"UPDATE public.job_runs SET as_of = now() WHERE id = {SUCCEEDED}",
    "finished run's settings": f"UPDATE public.job_runs SET settings = '{{}}' WHERE id = {SUCCEEDED}",
    "run deleted": f"DELETE FROM public.job_runs WHERE id = {SUCCEEDED}",
    "runs truncated": "TRUNCATE public.job_runs CASCADE",
    **{f"run forged {status}": "INSERT INTO public.job_runs (job, trigger, as_of, status, finished_at, host, pid)"
                              f" VALUES ('reconcile', 'manual', now(), '{status}', now(), 'h', 1)"
       for status in ("SUCCEEDED", "FAILED", "ABANDONED")},
    "run forged RUNNING without a claim token":
        "INSERT INTO public.job_runs (job, trigger, as_of, status, host, pid)"
        " VALUES ('recurring-rewards', 'manual', now(), 'RUNNING', 'h', 1)",
    "run claimed with stats already": "WITH t AS (SELECT set_config('rewards.claim_token', 'mine', true))"
                                      " INSERT INTO public.job_runs (job, trigger, as_of, status, stats, host, pid)"
                                      " SELECT 'recurring-rewards', 'manual', now(), 'RUNNING', '{\"rows\": 5}', 'h', 1"
                                      " FROM t",
    "skip forged with stats": "INSERT INTO public.job_runs (job, trigger, as_of, status, stats, host, pid)"
                              " VALUES ('reconcile', 'manual', now(), 'SKIPPED', '{\"x\": 1}', 'h', 1)",
    "another's running run marked SUCCEEDED": f"UPDATE public.job_runs SET status = 'SUCCEEDED' WHERE id = {RUNNING}",
    "another's running run marked FAILED": f"UPDATE public.job_runs SET status = 'FAILED' WHERE id = {RUNNING}",
    "another's running run's stats rewritten": f"UPDATE public.job_runs SET stats = '{{}}' WHERE id = {RUNNING}",
    "another's lease renewed": f"UPDATE public.job_runs SET heartbeat_at = clock_timestamp() WHERE id = {RUNNING}",
    "a takeover that rewrites stats": "UPDATE public.job_runs SET status = 'ABANDONED', stats = '{\"rows\": 0}'"
                                      f" WHERE id = {RUNNING}",
    "a run's start back-dated": f"UPDATE public.job_runs SET started_at = '2020-01-01' WHERE id = {RUNNING}",
    # ── the ledger: sign and type per key namespace ──────────────────────────
    "EXPIRY of +777,777": _ledger_row(777777, "EXPIRY", f"'expiry:' || {USER} || ':2026-06-01T00:00:00+00:00:9'"),
    "CLAWBACK of +666,666": _ledger_row(666666, "REFERRAL_CLAWBACK", "'clawback:' || " + _reward_key("recurring"),
                                        ref=REL),
    "RECURRING of -5,000": _ledger_row(-5000, "REFERRAL_RECURRING", _reward_key("recurring"), ref=REL),
    "RECURRING of 0": _ledger_row(0, "REFERRAL_RECURRING", _reward_key("recurring"), ref=REL),
    "L2 of -1": _ledger_row(-1, "REFERRAL_L2", _reward_key("l2"), ref=REL),
    "recovery of +5": _ledger_row(5, "REFERRAL_CLAWBACK", f"'recover:' || {USER} || ':2026-06-01T00:00:00+00:00:1'"),
    "RECURRING key of type L2": _ledger_row(5, "REFERRAL_L2", _reward_key("recurring"), ref=REL),
    "recurring key of type ADMIN_GRANT": _ledger_row(5, "ADMIN_GRANT", _reward_key("recurring"), ref=REL),
    "recurring key without its relationship": _ledger_row(5, "REFERRAL_RECURRING", _reward_key("recurring")),
    "recurring key of another relationship": _ledger_row(5, "REFERRAL_RECURRING", _reward_key("recurring"),
                                                         ref="gen_random_uuid()"),
    "clawback of another relationship": _ledger_row(-5, "REFERRAL_CLAWBACK",
                                                    "'clawback:' || " + _reward_key("recurring"), ref="gen_random_uuid()"),
    "clawback of a key that is no reward": _ledger_row(-5, "REFERRAL_CLAWBACK", "'clawback:welcome:1'"),
    "expiry under another user's key": _ledger_row(-5, "EXPIRY", "'expiry:' || gen_random_uuid() || ':2026'"),
    "expiry with a ref_id": _ledger_row(-5, "EXPIRY", f"'expiry:' || {USER} || ':2026'", ref=REL),
    "recovery under another user's key": _ledger_row(-5, "REFERRAL_CLAWBACK", "'recover:' || gen_random_uuid() || ':x:1'"),
    "recovery as an EXPIRY": _ledger_row(-5, "EXPIRY", f"'recover:' || {USER} || ':x:1'"),
    "an app key": _ledger_row(50, "REFERRAL_WELCOME", "'welcome:1'"),
    "no key": _ledger_row(50, "ADMIN_GRANT", "NULL"),
    "ledger row rewritten": "UPDATE public.user_point_transactions SET delta = delta + 1",
    "ledger row deleted": "DELETE FROM public.user_point_transactions",
    "ledger truncated": "TRUNCATE public.user_point_transactions",
    # ── the app's tables, the cache's identity, the schema ───────────────────
    "relationship un-expired": "UPDATE public.user_referral_relationships SET status = 'PENDING', expired_at = NULL"
                               " WHERE status = 'EXPIRED'",
    "relationship rewarded": "UPDATE public.user_referral_relationships SET status = 'REWARDED' WHERE status = 'EXPIRED'",
    "relationship expired without a date": "UPDATE public.user_referral_relationships SET status = 'EXPIRED'"
                                           " WHERE status = 'REWARDED'",
    "relationship's referrer": f"UPDATE public.user_referral_relationships SET referrer_user_id = {NOBODY}",
    "relationship deleted": "DELETE FROM public.user_referral_relationships",
    "payment refunded": "UPDATE public.user_subscription_payments SET status = 'REFUNDED'",
    "payment deleted": "DELETE FROM public.user_subscription_payments",
    "cache row deleted": "DELETE FROM public.user_point_balances",
    "cache row's user": f"UPDATE public.user_point_balances SET user_id = {NOBODY}",
    "migration forged": "INSERT INTO public.rewards_schema_migrations (version, name, checksum) VALUES ('999', 'x', 'x')",
    "triggers disabled": "ALTER TABLE public.job_runs DISABLE TRIGGER ALL",
    "reward triggers disabled": "ALTER TABLE public.referral_rewards DISABLE TRIGGER trg_referral_rewards_record",
    "trigger dropped": "DROP TRIGGER trg_job_runs_record ON public.job_runs",
    "rule function replaced": "CREATE OR REPLACE FUNCTION public.rewards_bound_by_record_rules()"
                              " RETURNS boolean LANGUAGE sql STABLE AS 'SELECT false'",
    "triggers bypassed": "SET session_replication_role = replica",
    "table dropped": "DROP TABLE public.reconciliation_findings",
}


def _fingerprint(engine: Any) -> dict[str, str]:
    with engine.connect() as conn:
        return {table: hashlib.md5(str(conn.execute(text(
            f"SELECT coalesce(string_agg(CAST(t AS text), '|' ORDER BY CAST(t AS text)), '') FROM public.{table} t"))
            .scalar_one()).encode()).hexdigest() for table in TABLES}


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _build_history_as_the_service(engine: Any, service: Any, settings: Any) -> None:
    """Every job as the service role, a clawback, a repair, and both kinds of takeover."""
    users = add_work_for_every_job(engine)
    for job in PIPELINE:
        result = run_job(job, settings=settings, engine=service, as_of=AS_OF, repair=job.name == "reconcile")
        assert result.status == "SUCCEEDED", (job.name, result.error)
    with engine.begin() as conn:  # the owner (billing, the app): a refund, a late lot, a cache drift
        conn.execute(text("UPDATE public.user_subscription_payments SET status = 'REFUNDED'"
                          " WHERE paid_at = (SELECT max(paid_at) FROM public.user_subscription_payments)"))
        add_app_points(conn, user=users["saver"], delta=30, type="ADMIN_GRANT", created_at=utc(2024, 1, 1))
        add_app_points(conn, user=new_id(), delta=9, type="ADMIN_GRANT", created_at=LATER, update_cache=False)
    # a takeover of a stale run: claimed by "another replica" (this role), its heartbeat then old
    stale = runs.claim(service, job="recurring-rewards", trigger="manual", as_of=LATER, scheduled_for=None,
                       dry_run=False, settings={}, lease_seconds=1)
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.job_runs SET heartbeat_at = heartbeat_at - interval '1 hour' WHERE id = :id"),
                     {"id": stale})
    clawing = run_job(recurring_rewards.JOB, settings=settings, engine=service, as_of=LATER)
    assert clawing.status == "SUCCEEDED" and clawing.stats["clawbacks"] == 1, clawing
    # a takeover of a dead run of this host (its process gone)
    dead = runs.claim(service, job="reconcile", trigger="manual", as_of=LATER, scheduled_for=None, dry_run=False,
                      settings={}, lease_seconds=300)
    with engine.begin() as conn:
        conn.execute(text("UPDATE public.job_runs SET pid = :pid WHERE id = :id"), {"pid": _dead_pid(), "id": dead})
    repaired = run_job(reconcile.JOB, settings=settings, engine=service, as_of=LATER, repair=True)
    assert repaired.status == "SUCCEEDED", repaired.error
    assert repaired.stats["repaired"] >= 1 and repaired.stats["findings"] >= 1, repaired.stats
    with engine.connect() as conn:
        ended = dict(conn.execute(text("SELECT id, status FROM public.job_runs WHERE id IN (:a, :b)"),
                                  {"a": stale, "b": dead}).all())
    assert ended == {stale: "ABANDONED", dead: "ABANDONED"}
    # two runs this process holds now, as a replica at work would: their rows must stay theirs
    for job in ("expire-points", "reconcile"):
        runs.claim(service, job=job, trigger="manual", as_of=LATER, scheduled_for=None, dry_run=False,
                   settings={}, lease_seconds=300)


@pytest.mark.slow
def test_as_the_service_role_every_job_runs_and_no_statement_rewrites_what_is_recorded(
        service_url, engine, make_settings):  # noqa: F811 (the fixture imported above)
    service = make_engine(service_url, pool_size=2)
    try:
        _build_history_as_the_service(engine, service, make_settings(database_url=service_url))
        with engine.connect() as conn:  # every statement has rows to aim at
            for target in (RECONCILE, SUCCEEDED, ABANDONED, OTHER_RUN, RUNNING, RUNNING_RECONCILE, STANDING,
                           CLAWED, REL, USER):
                assert conn.execute(text(f"SELECT {target}")).scalar() is not None, target
            assert conn.execute(text(f"SELECT count(*) FROM public.reconciliation_findings WHERE run_id = {RECONCILE}")
                                ).scalar() and conn.execute(text(
                f"SELECT count(*) FROM public.reconciliation_discrepancies WHERE run_id = {RECONCILE}")).scalar()
        before = _fingerprint(engine)

        accepted = []
        for name, statement in FORBIDDEN.items():
            try:
                with service.begin() as conn:
                    conn.exec_driver_sql(statement)
            except (ProgrammingError, InternalError, NotSupportedError) as refused:
                # insufficient_privilege; on Citus also a worker's refusal of an INSERT … SELECT relayed as an
                # internal error with the trigger's own message, and a new distribution value refused as such
                if getattr(refused.orig, "pgcode", None) != "42501" and not re.search(r" is a job's: | may write only the jobs' keys", str(refused.orig)) \
                        and "modifying the partition value" not in str(refused.orig):
                    accepted.append(f"{name}: failed otherwise: {refused.orig}")
            else:
                accepted.append(f"{name}: accepted")

        assert accepted == [], "\n".join(accepted)
        assert len(FORBIDDEN) >= 90
        assert _fingerprint(engine) == before
    finally:
        service.dispose()


def test_the_owner_and_superuser_stay_free_and_a_plain_forgery_needs_the_claim_protocol(service_url, engine):
    """The owner can always do anything (it could drop a trigger); the service role's own claim with
    a token of its own is what a replica does: the forgery then is a real, server-dated, attributed run."""
    with engine.begin() as conn:
        run_id = conn.execute(text("INSERT INTO public.job_runs (job, trigger, as_of, status, finished_at, host, pid)"
                                   " VALUES ('reconcile', 'manual', now(), 'SUCCEEDED', now(), 'h', 1) RETURNING id")
                              ).scalar_one()
        conn.execute(text("UPDATE public.job_runs SET error = 'noted by ops' WHERE id = :id"), {"id": run_id})
    service = make_engine(service_url, pool_size=1)
    try:
        with service.begin() as conn:
            conn.execute(text("SELECT set_config('rewards.claim_token', :t, true)"), {"t": uuid.uuid4().hex})
            forged = conn.execute(text(
                "INSERT INTO public.job_runs (job, trigger, as_of, status, started_at, heartbeat_at, host, pid)"
                " VALUES ('expire-points', 'manual', now(), 'RUNNING', '2020-01-01', '2020-01-01', 'h', 1)"
                " RETURNING id")).scalar_one()
            conn.execute(text("UPDATE public.job_runs SET status = 'SUCCEEDED' WHERE id = :id"), {"id": forged})
        with engine.connect() as conn:
            row = conn.execute(text("SELECT started_at, finished_at, claimed_by, claim_token_sha256 IS NOT NULL AS hashed"
                                    " FROM public.job_runs WHERE id = :id"), {"id": forged}).one()
        assert row.started_at.year >= 2026 and row.finished_at >= row.started_at  # dated by the server
        assert row.claimed_by.startswith(service.url.username) and row.hashed
    finally:
        service.dispose()
