-- Least privileges of the rewards-jobs service (the daemon, and `scheduler.py run|run-all|jobs|
-- history|report|health`): the role it connects as.
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
-- Grants alone cannot say which rows a role may write, so two triggers (BEFORE INSERT/UPDATE, for
-- members of rewards_jobs only, superusers and the owner excepted) narrow them to what the jobs write:
--   * job_runs: a run is inserted RUNNING (or SKIPPED), never finished; only a RUNNING run changes;
--     so no fake SUCCEEDED row, and no FAILED run flipped to SUCCEEDED;
--   * the ledger: every row this role appends carries an idempotency key in a job's own namespace,
--     of that job's type (recurring: REFERRAL_RECURRING, l2: REFERRAL_L2, clawback: REFERRAL_CLAWBACK,
--     expiry: EXPIRY), so it cannot take a key of the app's or pass one kind of points off as another.
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
-- what a run was (job, trigger, as-of, settings, host) cannot be rewritten.
GRANT SELECT, INSERT ON public.job_runs TO rewards_jobs;
GRANT UPDATE (status, heartbeat_at, finished_at, stats, error) ON public.job_runs TO rewards_jobs;
GRANT USAGE ON SEQUENCE public.job_runs_id_seq TO rewards_jobs;

-- Reconciliation results: written once per reconcile run, read by `report`.
GRANT SELECT, INSERT ON public.reconciliation_runs, public.reconciliation_discrepancies,
                        public.reconciliation_findings TO rewards_jobs;
-- reconcile records its repairs on its own run's row once the report that lists them is recorded
GRANT UPDATE (repaired, summary) ON public.reconciliation_runs TO rewards_jobs;

-- The basis record of every reward (migration 016): written and updated (clawbacks) by the reward jobs.
DO $$
BEGIN
    IF to_regclass('public.referral_rewards') IS NOT NULL THEN
        GRANT SELECT, INSERT, UPDATE ON public.referral_rewards TO rewards_jobs;
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

CREATE OR REPLACE FUNCTION public.rewards_jobs_guard_job_runs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT public.rewards_jobs_role_is_guarded() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' AND NEW.status NOT IN ('RUNNING', 'SKIPPED') THEN
        RAISE EXCEPTION 'job_runs: % may insert a run only as RUNNING or SKIPPED, not %', current_user, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status <> 'RUNNING' THEN
        RAISE EXCEPTION 'job_runs: run % is %; a finished run does not change', OLD.id, OLD.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rewards_jobs_guard ON public.job_runs;
CREATE TRIGGER rewards_jobs_guard BEFORE INSERT OR UPDATE ON public.job_runs
    FOR EACH ROW EXECUTE FUNCTION public.rewards_jobs_guard_job_runs();

CREATE OR REPLACE FUNCTION public.rewards_jobs_guard_ledger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    expected text := CASE split_part(COALESCE(NEW.idempotency_key, ''), ':', 1)
                         WHEN 'recurring' THEN 'REFERRAL_RECURRING'
                         WHEN 'l2' THEN 'REFERRAL_L2'
                         WHEN 'clawback' THEN 'REFERRAL_CLAWBACK'
                         WHEN 'expiry' THEN 'EXPIRY'
                     END;
BEGIN
    IF public.rewards_jobs_role_is_guarded() AND (expected IS NULL OR NEW.type IS DISTINCT FROM expected) THEN
        RAISE EXCEPTION 'user_point_transactions: % may write only the jobs'' keys (recurring:, l2:, clawback:, '
                        'expiry:) with their types; not key % of type %', current_user, NEW.idempotency_key, NEW.type
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rewards_jobs_guard ON public.user_point_transactions;
CREATE TRIGGER rewards_jobs_guard BEFORE INSERT ON public.user_point_transactions
    FOR EACH ROW EXECUTE FUNCTION public.rewards_jobs_guard_ledger();
