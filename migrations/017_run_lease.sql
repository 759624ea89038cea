-- 017: the lease a run was claimed with is recorded on its row, so a takeover waits for the lease of
-- the run it takes over, not the claimer's setting (REWARDS_RUN_LEASE_SECONDS may differ between
-- replicas and between a long manual run and the daemon).
ALTER TABLE public.job_runs
    ADD COLUMN IF NOT EXISTS lease_seconds INT NOT NULL DEFAULT 300 CHECK (lease_seconds > 0);
