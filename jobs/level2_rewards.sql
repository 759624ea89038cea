-- level2-rewards: REWARDED relationships (level 1 or 2) that have a level-2 beneficiary, months
-- 0 .. REWARDS_L2_MONTHS - 1. The scan runs over (rewarded_at, id) in keyset order on
-- idx_urr_rewarded_scan (migration 014), from scan_from (core/rewards.py).

-- name: count_to_scan --
SELECT count(*)
FROM public.user_referral_relationships AS r
WHERE r.status = 'REWARDED'
  AND r.rewarded_at > coalesce(CAST(:scan_from AS timestamptz), '-infinity')
  AND r.rewarded_at <= CAST(:as_of AS timestamptz);

-- name: count_missing_rewarded_at --
-- Bad data, skipped: REWARDED without the first-payment instant its months count from.
SELECT count(*)
FROM public.user_referral_relationships
WHERE status = 'REWARDED' AND rewarded_at IS NULL;

-- name: with_beneficiary --
-- (A fragment over the given rows of user_referral_relationships.) The level-2
-- beneficiary of r (referred user C): for level 1 (B invited C), the referrer A of B's own
-- relationship when that one is level 1 and ACTIVE or REWARDED; for level 2, r's referrer.
-- There is none when it is C, or for level 1 B (a cycle or a self-referral).
SELECT r.id, r.level, r.status, r.rewarded_at, r.referrer_user_id, r.referred_user_id,
       b.beneficiary_user_id,
       r.referrer_user_id = r.referred_user_id AS self_referral,
       b.beneficiary_user_id IS NOT NULL
           AND b.beneficiary_user_id <> r.referred_user_id
           AND (r.level = 2 OR b.beneficiary_user_id <> r.referrer_user_id) AS has_beneficiary
FROM {relationships} AS r
-- B's own relationship, by one probe of the unique index on referred_user_id per relationship
-- (LIMIT 1 keeps the planner from hashing every relationship of history instead).
LEFT JOIN LATERAL (
    SELECT p.referrer_user_id
    FROM public.user_referral_relationships AS p
    WHERE r.level = 1
      AND p.referred_user_id = r.referrer_user_id
      AND p.level = 1
      AND p.status IN ('ACTIVE', 'REWARDED')
    LIMIT 1
) AS parent ON TRUE
CROSS JOIN LATERAL (
    SELECT CASE WHEN r.level = 2 THEN r.referrer_user_id ELSE parent.referrer_user_id END AS beneficiary_user_id
) AS b

-- name: select_batch --
-- The next batch after (after_rewarded_at, after_id); the first batch starts after
-- (scan_from, the last uuid). Counts why relationships earn nothing: self-referrals and cycles
-- (bad data, skipped) and level-1 relationships whose referrer was not referred at level 1.
WITH batch AS (
    SELECT r.*
    FROM public.user_referral_relationships AS r
    WHERE r.status = 'REWARDED'
      AND r.rewarded_at <= CAST(:as_of AS timestamptz)
      AND (r.rewarded_at, r.id) > (coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity'),
                                   CAST(:after_id AS uuid))
    ORDER BY r.rewarded_at, r.id
    LIMIT :batch_size
),
classified AS (
    {with_beneficiary}
),
last AS (
    SELECT rewarded_at, id FROM batch ORDER BY rewarded_at DESC, id DESC LIMIT 1
)
SELECT (SELECT rewarded_at FROM last)                   AS last_rewarded_at,
       (SELECT CAST(id AS text) FROM last)              AS last_id,
       count(*)                                         AS relationships_scanned,
       count(*) FILTER (WHERE c.self_referral)          AS skipped_self_referral,
       count(*) FILTER (WHERE NOT c.self_referral AND c.beneficiary_user_id IS NOT NULL
                          AND NOT c.has_beneficiary)    AS skipped_cycle,
       count(*) FILTER (WHERE c.beneficiary_user_id IS NULL) AS without_level2_referrer
FROM classified AS c;

-- name: batch_range --
-- (A fragment.) The batch's relationships: REWARDED, keys after (after_rewarded_at, after_id)
-- up to (last_rewarded_at, last_id), re-read inside the batch's transaction on the same index.
(SELECT *
 FROM public.user_referral_relationships AS r
 WHERE r.status = 'REWARDED'
   AND (r.rewarded_at, r.id) > (coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity'),
                                CAST(:after_id AS uuid))
   AND (r.rewarded_at, r.id) <= (CAST(:last_rewarded_at AS timestamptz), CAST(:last_id AS uuid))
   -- the same bounds on rewarded_at alone, for the planner's row estimate:
   AND r.rewarded_at BETWEEN coalesce(CAST(:after_rewarded_at AS timestamptz), '-infinity')
                         AND CAST(:last_rewarded_at AS timestamptz))

-- name: relationships --
-- (A fragment.) The batch's relationships that earn level-2 rewards, with their beneficiary.
SELECT c.id, c.referred_user_id, c.rewarded_at, c.beneficiary_user_id
FROM ({with_beneficiary}) AS c
WHERE c.has_beneficiary
