-- Migration 014: indexes that keep the daily reward scans proportional to the relationships still
-- inside their reward months, not to all history.

-- recurring-rewards and level2-rewards walk REWARDED relationships in (rewarded_at, id) keyset
-- order from a lower bound on rewarded_at (core/rewards.py, "scan restriction"). REWARDED rows
-- with rewarded_at NULL (bad data, counted by the jobs) are found through it too.
CREATE INDEX IF NOT EXISTS idx_urr_rewarded_scan
    ON public.user_referral_relationships(rewarded_at, id)
    WHERE status = 'REWARDED';
