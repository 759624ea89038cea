-- `explain USER_ID`: what support needs to answer "where are my points?". Read-only; every instant
-- is the bound :as_of, never NOW().

-- name: user_balance --
-- The ledger at the as-of (rows dated at or before it) and the balance cache now.
SELECT (SELECT count(*) FROM public.user_point_transactions
        WHERE user_id = :user_id AND created_at <= :as_of) AS ledger_rows,
       (SELECT COALESCE(sum(delta), 0) FROM public.user_point_transactions
        WHERE user_id = :user_id AND created_at <= :as_of) AS ledger_balance,
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
SELECT k AS month,
       CAST(:rewarded_at AS timestamptz) + make_interval(months => k) AS starts_at,
       CAST(:rewarded_at AS timestamptz) + make_interval(months => k + 1) AS ends_at
FROM generate_series(CAST(:first_month AS int), CAST(:last_month AS int)) AS k
ORDER BY k;

-- name: rewarded_referred_users --
-- The referred users of this user's rewards, wherever the chain stands now.
SELECT DISTINCT referred_user_id FROM public.referral_rewards WHERE beneficiary_user_id = :user_id;

-- name: recorded_rewards --
-- The reward jobs' basis records of this user's rewards written at or before the as-of, as they stood
-- then: a clawback dated after it is not shown.
SELECT idempotency_key, relationship_id, referred_user_id, level, month, payment_id, points, rewarded_at,
       CASE WHEN clawed_back_at <= :as_of THEN clawback_key END AS clawback_key,
       clawed_back_points, expired_points, unrecovered_points, recovered_points, clawed_back_at
FROM public.referral_rewards
WHERE beneficiary_user_id = :user_id AND rewarded_at <= :as_of
ORDER BY referred_user_id, level, month, rewarded_at, idempotency_key;

-- name: outstanding --
-- Unrecovered points of this user's clawbacks dated at or before the as-of, not recovered since, by level.
SELECT level, sum(unrecovered_points - recovered_points) AS points
FROM public.referral_rewards
WHERE beneficiary_user_id = :user_id AND clawed_back_at <= :as_of AND unrecovered_points > recovered_points
GROUP BY level
ORDER BY level;

-- name: ledger_rows --
-- The user's newest ledger rows dated at or before the as-of, with the run that wrote each reward or
-- clawback, as recorded beside it in referral_rewards (other rows' runs: first_runs).
SELECT t.created_at, t.type, t.delta, t.idempotency_key, t.ref_id, t.note,
       coalesce(reward.run_id, clawback.clawback_run_id) AS run_id,
       CASE coalesce(reward.level, clawback.level) WHEN 1 THEN 'recurring-rewards' WHEN 2 THEN 'level2-rewards' END
         AS job
FROM public.user_point_transactions t
LEFT JOIN public.referral_rewards reward ON reward.idempotency_key = t.idempotency_key
LEFT JOIN public.referral_rewards clawback ON clawback.clawback_key = t.idempotency_key
WHERE t.user_id = :user_id AND t.created_at <= :as_of
ORDER BY t.created_at DESC, t.idempotency_key DESC NULLS LAST
LIMIT :limit;

-- name: first_runs --
-- The first real run of each job at each of these as-ofs: the run that wrote an expiry or a recovery
-- dated then (a re-run of the same as-of writes nothing again). Apart from the ledger: on Citus the
-- runs table is the coordinator's own and is not joined with a distributed table.
SELECT DISTINCT ON (job, as_of) job, as_of, id
FROM public.job_runs
WHERE as_of = ANY(CAST(:instants AS timestamptz[])) AND NOT dry_run AND status <> 'SKIPPED'
ORDER BY job, as_of, started_at, id;
