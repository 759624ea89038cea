-- Migration 012: what the scheduled jobs need on top of 011.

-- ── 1. Payments feed, written by billing ────────────────────────────────────
CREATE TABLE IF NOT EXISTS public.user_subscription_payments (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents >= 0),
    status       VARCHAR(20) NOT NULL CHECK (status IN ('PAID','REFUNDED','FAILED')),
    paid_at      TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX IF NOT EXISTS idx_usp_user_paid_at ON public.user_subscription_payments(user_id, paid_at);

-- ── 2. When expire-pending expired a relationship ───────────────────────────
ALTER TABLE public.user_referral_relationships ADD COLUMN IF NOT EXISTS expired_at TIMESTAMPTZ;

-- ── 3. Ledger: idempotency keys and append-only ─────────────────────────────
-- Rows written by the jobs carry a key; the app's rows may leave it NULL (NULLs never conflict).
ALTER TABLE public.user_point_transactions ADD COLUMN IF NOT EXISTS idempotency_key VARCHAR(200);
CREATE UNIQUE INDEX IF NOT EXISTS uq_upt_idempotency_key
    ON public.user_point_transactions(idempotency_key);

CREATE OR REPLACE FUNCTION public.user_point_transactions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'user_point_transactions is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DROP TRIGGER IF EXISTS trg_upt_append_only ON public.user_point_transactions;
CREATE TRIGGER trg_upt_append_only
    BEFORE UPDATE OR DELETE ON public.user_point_transactions
    FOR EACH ROW EXECUTE FUNCTION public.user_point_transactions_append_only();

DROP TRIGGER IF EXISTS trg_upt_no_truncate ON public.user_point_transactions;
CREATE TRIGGER trg_upt_no_truncate
    BEFORE TRUNCATE ON public.user_point_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION public.user_point_transactions_append_only();

-- ── 4. Job runs ─────────────────────────────────────────────────────────────
CREATE TABLE IF NOT EXISTS public.job_runs (
    id            BIGSERIAL PRIMARY KEY,
    job           VARCHAR(40) NOT NULL,
    trigger       VARCHAR(20) NOT NULL CHECK (trigger IN ('schedule','manual','catch-up')),
    as_of         TIMESTAMPTZ NOT NULL,
    scheduled_for TIMESTAMPTZ,
    status        VARCHAR(20) NOT NULL
                  CHECK (status IN ('RUNNING','SUCCEEDED','FAILED','SKIPPED','ABANDONED')),
    dry_run       BOOLEAN NOT NULL DEFAULT FALSE,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    finished_at   TIMESTAMPTZ,
    settings      JSONB NOT NULL DEFAULT '{}'::jsonb,
    stats         JSONB NOT NULL DEFAULT '{}'::jsonb,
    error         TEXT,
    host          TEXT NOT NULL,
    pid           INT NOT NULL
);

-- Only one run of a job may be RUNNING, whatever started it.
CREATE UNIQUE INDEX IF NOT EXISTS uq_job_runs_one_running
    ON public.job_runs(job) WHERE status = 'RUNNING';

-- One scheduled tick is claimed by one run (replicas race for it); a failed or
-- abandoned attempt leaves the index, so the tick can be retried.
CREATE UNIQUE INDEX IF NOT EXISTS uq_job_runs_one_per_tick
    ON public.job_runs(job, scheduled_for)
    WHERE scheduled_for IS NOT NULL AND status IN ('RUNNING','SUCCEEDED');

CREATE INDEX IF NOT EXISTS idx_job_runs_job_started ON public.job_runs(job, started_at DESC);
