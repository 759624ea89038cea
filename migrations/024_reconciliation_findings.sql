-- Migration 024: the rules audit's findings (SPEC v3 "The rules audit"; jobs/rules_audit.py).
-- One row per finding of a reconcile run: its kind (REWARD_INVARIANT, RECOVERY_INVARIANT,
-- EXPIRY_INVARIANT), whom and what it is about, and a sentence. Run bookkeeping like the other
-- reconcile tables: a plain table, left local on a Citus coordinator (migration 019).
CREATE TABLE IF NOT EXISTS public.reconciliation_findings (
    run_id           BIGINT NOT NULL REFERENCES public.job_runs(id),
    number           INT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('REWARD_INVARIANT', 'RECOVERY_INVARIANT', 'EXPIRY_INVARIANT')),
    user_id          UUID,      -- the beneficiary (reward, recovery) or the user (expiry)
    referred_user_id UUID,
    level            INT,
    month            INT,
    reward_key       TEXT,
    points           BIGINT,
    detail           TEXT NOT NULL,
    PRIMARY KEY (run_id, number)
);
