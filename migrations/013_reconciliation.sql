-- Migration 013: what expire-points and reconcile need.

-- ── 1. expire-points: finding the users whose points cross the cutoff ───────
-- A daily run reads only the earning rows that crossed the cutoff since the previous run
-- (created_at in [previous cutoff, cutoff)); this index serves that range with an index-only scan.
CREATE INDEX IF NOT EXISTS idx_upt_earned_created
    ON public.user_point_transactions(created_at) INCLUDE (user_id) WHERE delta > 0;

-- ── 2. reconcile: one row per run, one row per discrepant user ──────────────
-- Ledger totals (ledger_*) are over every row in the run's snapshot, like the cache they are compared
-- with; closing_balance is the ledger balance as of the run's as-of instant (rows created_at <= as_of),
-- the `closing` of the roll-forward and the `opening` of the next one.
CREATE TABLE IF NOT EXISTS public.reconciliation_runs (
    run_id          BIGINT PRIMARY KEY REFERENCES public.job_runs(id),
    as_of           TIMESTAMPTZ NOT NULL,
    users_checked   BIGINT NOT NULL,
    ledger_rows     BIGINT NOT NULL,
    discrepancies   BIGINT NOT NULL,
    ledger_balance  BIGINT NOT NULL,
    ledger_earned   BIGINT NOT NULL,
    ledger_spent    BIGINT NOT NULL,
    cache_balance   BIGINT NOT NULL,
    cache_earned    BIGINT NOT NULL,
    cache_spent     BIGINT NOT NULL,
    net_drift       BIGINT NOT NULL,
    closing_balance BIGINT NOT NULL,
    repaired        BIGINT NOT NULL DEFAULT 0,
    csv_file        TEXT,
    json_file       TEXT,
    summary         JSONB NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS idx_reconciliation_runs_as_of ON public.reconciliation_runs(as_of);

-- Cached values are NULL when the user has no cache row (MISSING_BALANCE); ledger values are 0 when
-- the user has no ledger rows (ORPHAN_BALANCE). drift = coalesce(cached_balance, 0) - ledger_balance.
CREATE TABLE IF NOT EXISTS public.reconciliation_discrepancies (
    run_id              BIGINT NOT NULL REFERENCES public.job_runs(id),
    user_id             UUID NOT NULL,
    kinds               TEXT[] NOT NULL,
    cached_balance      BIGINT,
    ledger_balance      BIGINT NOT NULL,
    drift               BIGINT NOT NULL,
    cached_total_earned BIGINT,
    ledger_total_earned BIGINT NOT NULL,
    cached_total_spent  BIGINT,
    ledger_total_spent  BIGINT NOT NULL,
    PRIMARY KEY (run_id, user_id)
);
