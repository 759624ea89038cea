-- Least privileges of the rewards-jobs service (the daemon, and `scheduler.py run|run-all|jobs|
-- history|report|close|health`): the role it connects as.
--
-- Two roles:
--   * the OWNER of the tables applies the migrations (`python scheduler.py migrate` with the owner's
--     DATABASE_URL, as a deploy step); the service never needs it;
--   * rewards_jobs (this file) runs the jobs. It owns nothing, cannot create, alter or drop a table,
--     cannot delete or rewrite a ledger row, and changes only the columns the rules change.
--
-- Run it after the migrations, in the application database, as the tables' owner (creating the role
-- needs CREATEROLE or a superuser; drop the CREATE ROLE block if an administrator made the role):
--     psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f docs/privileges.sql
-- then give the role its password out of band (never in a file):
--     psql "$OWNER_DATABASE_URL" -c "\password rewards_jobs"
-- PostgreSQL 14 and older let every role create tables in schema public; PostgreSQL 15 and later do
-- not. On the old ones also run: REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- When REWARDS_PAYMENTS_TABLE names a view, grant SELECT on that view instead of the table below.
-- Re-running the file is harmless. tests/test_privileges.py runs every job as this role.
--
-- Grants alone cannot say which rows a role may write. Migration 025's triggers bind every role but
-- the owner (and superusers) to the recorded facts' rules: a run is claimed RUNNING with a claim token
-- (or SKIPPED) and only its claimer renews or finishes it, a finished run never changes; reconcile rows
-- are written only by their own running reconcile; a reward's basis never changes and its clawback is
-- recorded once; a ledger row under a job's key has that job's type and sign. Two more triggers
-- (BEFORE INSERT/UPDATE, for members of rewards_jobs only) narrow this role to what the jobs write:
--   * the ledger: every row this role appends carries an idempotency key in a job's own namespace
--     (recurring:, l2:, clawback:, recover:, expiry:), so it cannot take a key of the app's (migration
--     025 then holds it to that job's type and sign);
--   * the relationships: this role only expires them (PENDING -> EXPIRED, with expired_at).
-- Only one role per database is guarded this way (the functions name it); re-run the file for it.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'rewards_jobs') THEN
        CREATE ROLE rewards_jobs LOGIN;
    END IF;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO rewards_jobs', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO rewards_jobs;

-- Which migrations are applied: the daemon and `health` refuse a database with pending ones.
GRANT SELECT ON public.rewards_schema_migrations TO rewards_jobs;

-- The app's referral graph: read it; expire-pending sets only status and expired_at.
GRANT SELECT ON public.user_referral_relationships TO rewards_jobs;
GRANT UPDATE (status, expired_at) ON public.user_referral_relationships TO rewards_jobs;

-- Billing's payments feed: read only.
GRANT SELECT ON public.user_subscription_payments TO rewards_jobs;

-- The points ledger: read and append (ON CONFLICT DO NOTHING needs no more). No UPDATE, DELETE or
-- TRUNCATE: the ledger is append-only, for this role even without its trigger.
GRANT SELECT, INSERT ON public.user_point_transactions TO rewards_jobs;

-- The balance cache: the ledger writer creates rows and moves the three totals; reconcile --repair
-- sets them to the ledger's (under FOR UPDATE, which needs the UPDATE privilege).
GRANT SELECT, INSERT ON public.user_point_balances TO rewards_jobs;
GRANT UPDATE (balance, total_earned, total_spent, updated_at) ON public.user_point_balances TO rewards_jobs;

-- Run records: claimed (INSERT), renewed and finished (UPDATE of the columns a run's end changes);
-- what a run was (job, trigger, as-of, settings, host) cannot be rewritten; no DELETE (migration 025:
-- only the claimer, with its token, renews or finishes a run, and a finished run never changes).
GRANT SELECT, INSERT ON public.job_runs TO rewards_jobs;
GRANT UPDATE (status, heartbeat_at, finished_at, stats, error) ON public.job_runs TO rewards_jobs;
GRANT USAGE ON SEQUENCE public.job_runs_id_seq TO rewards_jobs;

-- Reconciliation results: written by the reconcile run they belong to while it runs (migration 025),
-- read by `report`; no UPDATE of discrepancies or findings, no DELETE.
GRANT SELECT, INSERT ON public.reconciliation_runs, public.reconciliation_discrepancies,
                        public.reconciliation_findings TO rewards_jobs;
-- reconcile records its repairs on its own run's row once the report that lists them is recorded
GRANT UPDATE (repaired, summary) ON public.reconciliation_runs TO rewards_jobs;

-- Closed months (migration 026): `close --sign-off` records a month once; every reconcile reads them
-- (restatements), `report --period` renders one. No UPDATE, no DELETE (the migration's trigger refuses
-- them to every role).
GRANT SELECT, INSERT ON public.closed_months TO rewards_jobs;

-- The basis record of every reward (migrations 016, 023): inserted by the reward jobs, which then update
-- only what became of a reward: its clawback (record_clawbacks) and the points recovered since
-- (attribute_recoveries), never its basis (migration 025 also holds the direction: clawed back once,
-- recovered only upwards). No DELETE.
DO $$
BEGIN
    IF to_regclass('public.referral_rewards') IS NOT NULL THEN
        REVOKE UPDATE, DELETE, TRUNCATE ON public.referral_rewards FROM rewards_jobs;
        GRANT SELECT, INSERT ON public.referral_rewards TO rewards_jobs;
        GRANT UPDATE (clawback_key, clawed_back_points, expired_points, unrecovered_points, clawed_back_at,
                      clawback_run_id, recovered_points) ON public.referral_rewards TO rewards_jobs;
    END IF;
END
$$;

-- On Citus only (migration 028): the ledger writer's staging table, where a batch stages its rows and
-- deletes them before it commits (no other transaction ever sees one).
DO $$
BEGIN
    IF to_regclass('public.rewards_ledger_staging') IS NOT NULL THEN
        GRANT SELECT, INSERT, DELETE ON public.rewards_ledger_staging TO rewards_jobs;
        GRANT USAGE ON SEQUENCE public.rewards_ledger_staging_n_seq TO rewards_jobs;
    END IF;
END
$$;

-- ── Row rules for this role (see the head of the file) ─────────────────────
CREATE OR REPLACE FUNCTION public.rewards_jobs_role_is_guarded() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles guarded, pg_catalog.pg_roles me
                   WHERE guarded.rolname = 'rewards_jobs' AND me.rolname = current_user
                     AND NOT me.rolsuper AND pg_catalog.pg_has_role(me.oid, guarded.oid, 'MEMBER'))
$$;

-- (Before migration 025 this file guarded job_runs itself; the migration's trigger binds every role now.)
DROP TRIGGER IF EXISTS rewards_jobs_guard ON public.job_runs;
DROP FUNCTION IF EXISTS public.rewards_jobs_guard_job_runs();

CREATE OR REPLACE FUNCTION public.rewards_jobs_guard_ledger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF public.rewards_jobs_role_is_guarded() THEN
        RAISE EXCEPTION 'user_point_transactions: % may write only the jobs'' keys (recurring:, l2:, clawback:, '
                        'recover:, expiry:) with their types; not key % of type %', current_user, NEW.idempotency_key, NEW.type
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION public.rewards_jobs_guard_relationships() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF public.rewards_jobs_role_is_guarded()
       AND NOT (OLD.status = 'PENDING' AND NEW.status = 'EXPIRED' AND NEW.expired_at IS NOT NULL) THEN
        RAISE EXCEPTION 'user_referral_relationships: % may only expire a PENDING relationship (status EXPIRED with '
                        'expired_at), not move % from % to %', current_user, OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- The ledger's fires only for a key outside the jobs' namespaces, where the role is checked (migration
-- 025's rewards_replace_trigger: Citus's leave for a trigger on a distributed table).
SELECT public.rewards_replace_trigger('rewards_jobs_guard', 'public.user_point_transactions', $trigger$
    BEFORE INSERT ON public.user_point_transactions
    FOR EACH ROW
    WHEN (coalesce(split_part(NEW.idempotency_key, ':', 1), '') NOT IN ('recurring', 'l2', 'clawback', 'recover', 'expiry'))
    EXECUTE FUNCTION public.rewards_jobs_guard_ledger()
$trigger$);
SELECT public.rewards_replace_trigger('rewards_jobs_guard', 'public.user_referral_relationships', $trigger$
    BEFORE UPDATE ON public.user_referral_relationships
    FOR EACH ROW
    WHEN ((OLD.status, OLD.expired_at) IS DISTINCT FROM (NEW.status, NEW.expired_at))
    EXECUTE FUNCTION public.rewards_jobs_guard_relationships()
$trigger$);
