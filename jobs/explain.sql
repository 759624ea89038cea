-- `explain USER_ID`: what support needs to answer "where are my points?". Read-only; every instant
-- is the bound :as_of, never NOW().

-- name: user_balance --
SELECT (SELECT count(*) FROM public.user_point_transactions WHERE user_id = :user_id) AS ledger_rows,
       (SELECT COALESCE(sum(delta), 0) FROM public.user_point_transactions WHERE user_id = :user_id) AS ledger_balance,
       b.balance AS cached_balance, b.total_earned AS cached_total_earned, b.total_spent AS cached_total_spent,
       EXISTS (SELECT 1 FROM public.user_referral_relationships
               WHERE referrer_user_id = :user_id OR referred_user_id = :user_id) AS in_referrals
FROM (SELECT 1) AS one
LEFT JOIN public.user_point_balances b ON b.user_id = :user_id;

-- name: referrer --
-- Who referred this user (at most one row: referred_user_id is unique).
SELECT id, referrer_user_id, level, status, created_at, rewarded_at, expired_at
FROM public.user_referral_relationships
WHERE referred_user_id = :user_id;

-- name: referrals --
-- The relationships this user is rewarded for: level 1 (they invited C) earns recurring rewards,
-- level 2 earns level-2 rewards, either as the parent of a level-1 chain (A invited B, B invited C;
-- B's own relationship level 1, ACTIVE or REWARDED) or as the referrer of a level-2 row. As SPEC's
-- level2-rewards says: no reward when the beneficiary is C, or for a chain, B.
SELECT r.id, 1 AS reward_level, r.referred_user_id, r.referrer_user_id AS via_user_id, r.level,
       r.status, r.created_at, r.rewarded_at, r.expired_at
FROM public.user_referral_relationships r
WHERE r.level = 1 AND r.referrer_user_id = :user_id AND r.referred_user_id <> :user_id
UNION ALL
SELECT r.id, 2, r.referred_user_id, r.referrer_user_id, r.level, r.status, r.created_at, r.rewarded_at,
       r.expired_at
FROM public.user_referral_relationships r0
JOIN public.user_referral_relationships r ON r.referrer_user_id = r0.referred_user_id AND r.level = 1
WHERE r0.referrer_user_id = :user_id AND r0.level = 1 AND r0.status IN ('ACTIVE', 'REWARDED')
  AND r.referred_user_id <> :user_id AND r.referrer_user_id <> :user_id
UNION ALL
SELECT r.id, 2, r.referred_user_id, NULL, r.level, r.status, r.created_at, r.rewarded_at, r.expired_at
FROM public.user_referral_relationships r
WHERE r.level = 2 AND r.referrer_user_id = :user_id AND r.referred_user_id <> :user_id
ORDER BY 2, 8 NULLS LAST, 1;

-- name: reward_months --
-- Month k of a relationship: [rewarded_at + k months, rewarded_at + (k+1) months), in UTC.
SELECT CAST(:relationship_id AS uuid) AS relationship_id, k AS month,
       CAST(:rewarded_at AS timestamptz) + make_interval(months => k) AS starts_at,
       CAST(:rewarded_at AS timestamptz) + make_interval(months => k + 1) AS ends_at
FROM generate_series(CAST(:first_month AS int), CAST(:last_month AS int)) AS k
ORDER BY k;

-- name: payments --
-- Every payment of the referred users, whatever its status (support wants to see refunds too).
SELECT id, user_id, amount_cents, status, paid_at
FROM {payments}
WHERE user_id = ANY(CAST(:user_ids AS uuid[]))
ORDER BY user_id, paid_at, id;

-- name: recorded_rewards --
-- The reward jobs' basis records of this user's rewards (table of migration 016, when present).
SELECT idempotency_key, relationship_id, level, month, payment_id, points, rewarded_at,
       clawback_key, clawed_back_points, unrecovered_points, clawed_back_at
FROM public.referral_rewards
WHERE beneficiary_user_id = :user_id
ORDER BY relationship_id, level, month, rewarded_at;

-- name: has_reward_records --
SELECT to_regclass('public.referral_rewards') IS NOT NULL;

-- name: ledger_rows --
-- The user's newest ledger rows, each with the run that wrote it: a job writes its rows with
-- created_at = its as-of and keys of its own prefix, so the run is the latest real run of that job
-- for that as-of. Rows the app wrote (no such key) have no run.
SELECT t.created_at, t.type, t.delta, t.idempotency_key, t.ref_id, t.note, run.id AS run_id, run.job
FROM public.user_point_transactions t
LEFT JOIN LATERAL (
    SELECT j.id, j.job
    FROM public.job_runs j
    WHERE j.as_of = t.created_at AND NOT j.dry_run AND j.status <> 'SKIPPED'
      AND j.job = CASE
            WHEN t.idempotency_key LIKE 'recurring:%' OR t.idempotency_key LIKE 'clawback:recurring:%'
                THEN 'recurring-rewards'
            WHEN t.idempotency_key LIKE 'l2:%' OR t.idempotency_key LIKE 'clawback:l2:%'
                THEN 'level2-rewards'
            WHEN t.idempotency_key LIKE 'expiry:%' THEN 'expire-points'
          END
    ORDER BY j.started_at DESC, j.id DESC
    LIMIT 1
) run ON true
WHERE t.user_id = :user_id
ORDER BY t.created_at DESC, t.idempotency_key DESC NULLS LAST
LIMIT :limit;

-- name: expiring_next --
-- FIFO: debits (all of them, whatever their date) consume the oldest points first; what is left of
-- each earning expires `months` after it was earned. Rows already due are expired by the next run.
WITH earned AS (
    SELECT created_at, delta,
           sum(delta) OVER (ORDER BY created_at, id) AS earned_through
    FROM public.user_point_transactions
    WHERE user_id = :user_id AND delta > 0
), spent AS (
    SELECT COALESCE(-sum(delta), 0) AS total FROM public.user_point_transactions
    WHERE user_id = :user_id AND delta < 0
)
SELECT created_at + make_interval(months => CAST(:months AS int)) AS expires_at,
       sum(LEAST(delta, earned_through - spent.total)) AS points
FROM earned, spent
WHERE earned_through - spent.total > 0
GROUP BY 1
ORDER BY 1
LIMIT :limit;

-- name: reward_keys --
-- The user's reward and clawback rows by key (to tell paid months apart without migration 016).
SELECT idempotency_key, delta, created_at
FROM public.user_point_transactions
WHERE user_id = :user_id
  AND (idempotency_key LIKE 'recurring:%' OR idempotency_key LIKE 'l2:%' OR idempotency_key LIKE 'clawback:%');
