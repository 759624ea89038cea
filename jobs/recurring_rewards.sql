-- recurring-rewards: level-1 REWARDED relationships, months 1 .. REWARDS_RECURRING_MONTHS, for the
-- referrer. The scan runs over (rewarded_at, id) in keyset order on idx_urr_rewarded_scan
-- (migration 014), from scan_from (core/rewards.py: relationships still inside their months).

-- name: count_to_scan --
SELECT count(*)
FROM public.user_referral_relationships AS r
WHERE r.status = 'REWARDED' AND r.level = 1
  AND r.rewarded_at > coalesce(CAST(:scan_from AS timestamptz), '-infinity')
  AND r.rewarded_at <= CAST(:as_of AS timestamptz);

-- name: count_missing_rewarded_at --
-- Bad data, skipped: REWARDED without the first-payment instant its months count from.
SELECT count(*)
FROM public.user_referral_relationships
WHERE status = 'REWARDED' AND level = 1 AND rewarded_at IS NULL;

-- name: select_batch --
-- The next batch after (after_rewarded_at, after_id); the first batch starts after
-- (scan_from, the last uuid). Self-referrals are counted here and left out by `relationships`.
WITH batch AS (
    SELECT r.id, r.rewarded_at, r.referrer_user_id = r.referred_user_id AS self_referral
    FROM public.user_referral_relationships AS r
    WHERE r.status = 'REWARDED' AND r.level = 1
      AND r.rewarded_at <= CAST(:as_of AS timestamptz)
      AND (r.rewarded_at, r.id) > (coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity'),
                                   CAST(:after_id AS uuid))
    ORDER BY r.rewarded_at, r.id
    LIMIT :batch_size
),
last AS (
    SELECT rewarded_at, id FROM batch ORDER BY rewarded_at DESC, id DESC LIMIT 1
)
SELECT (SELECT rewarded_at FROM last)             AS last_rewarded_at,
       (SELECT CAST(id AS text) FROM last)        AS last_id,
       count(*)                                   AS relationships_scanned,
       count(*) FILTER (WHERE batch.self_referral) AS skipped_self_referral
FROM batch;

-- name: relationships --
-- (A fragment.) The batch's relationships, the keys after (after_rewarded_at, after_id) up to
-- (last_rewarded_at, last_id), that earn recurring rewards, re-checked inside the batch's
-- transaction (on the same index as select_batch); the beneficiary is the referrer.
SELECT r.id, r.referred_user_id, r.rewarded_at, r.referrer_user_id AS beneficiary_user_id
FROM public.user_referral_relationships AS r
WHERE r.status = 'REWARDED'
  AND (r.rewarded_at, r.id) > (coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity'),
                               CAST(:after_id AS uuid))
  AND (r.rewarded_at, r.id) <= (CAST(:last_rewarded_at AS timestamptz), CAST(:last_id AS uuid))
  -- the same bounds on rewarded_at alone, for the planner's row estimate:
  AND r.rewarded_at BETWEEN coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity')
                        AND CAST(:last_rewarded_at AS timestamptz)
  AND r.level = 1
  AND r.referrer_user_id <> r.referred_user_id
