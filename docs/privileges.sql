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
GRANT SELECT, INSERT ON public.reconciliation_runs, public.reconciliation_discrepancies TO rewards_jobs;
