-- What recurring-rewards and level2-rewards share: month windows, basis payments, amounts, and the
-- scan restriction. `{payments}` is the validated, quoted REWARDS_PAYMENTS_TABLE (a table or a view).

-- name: scan_from --
-- The high-water mark H (latest as-of of this job's successful real runs) and the earliest
-- rewarded_at still worth scanning: relationships whose last window ends after least(H, as_of) less
-- the late-payment margin. Month subtraction never moves a bound later than the exact one (see
-- core/rewards.py), so `rewarded_at > scan_from` keeps every relationship that still needs a look.
-- With no successful run yet, scan_from is NULL: scan all history.
SELECT max(as_of) AS high_water,
       CASE WHEN max(as_of) IS NOT NULL THEN
           least(max(as_of), CAST(:as_of AS timestamptz))
           - make_interval(days => :margin_days)
           - make_interval(months => :span_months)
       END AS scan_from
FROM public.job_runs
WHERE job = :job AND status = 'SUCCEEDED' AND NOT dry_run;

-- name: reward_candidates --
-- (A fragment: no semicolon, it is embedded in the ledger writer's statement.)
-- The ledger rows earned by the given relationships (columns id, referred_user_id, rewarded_at,
-- beneficiary_user_id): for each month k in :first_month .. :last_month, month k being
-- [rewarded_at + k months, rewarded_at + (k+1) months) in UTC, the basis payment is the referred
-- user's earliest PAID payment in it (by paid_at, then id) with paid_at <= :as_of. Points are
-- :fixed_points plus floor(amount_cents * :percent/100 * :points_per_usd/100), computed exactly in
-- numeric (div() truncates, which is floor for amounts >= 0). Rewards of 0 points are not written,
-- nor rewards too large for the ledger's INT column (counted by count_too_large_payments).
WITH relationship AS (
    {relationships}
),
basis AS (
    SELECT r.id AS relationship_id, r.beneficiary_user_id, month.k, payment.id AS payment_id,
           payment.amount_cents
    FROM relationship AS r
    CROSS JOIN LATERAL generate_series(CAST(:first_month AS int), CAST(:last_month AS int)) AS month(k)
    CROSS JOIN LATERAL (
        SELECT p.id, p.amount_cents
        FROM {payments} AS p
        WHERE p.user_id = r.referred_user_id
          AND p.status = 'PAID'
          AND p.paid_at >= r.rewarded_at + make_interval(months => month.k)
          AND p.paid_at <  r.rewarded_at + make_interval(months => month.k + 1)
          AND p.paid_at <= CAST(:as_of AS timestamptz)
        ORDER BY p.paid_at, p.id
        LIMIT 1
    ) AS payment
),
priced AS (
    SELECT basis.*,
           CAST(:fixed_points AS numeric)
           + div(basis.amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000)
             AS points
    FROM basis
)
SELECT beneficiary_user_id                                               AS user_id,
       CAST(points AS int)                                               AS delta,
       CAST(:ledger_type AS text)                                        AS type,
       relationship_id                                                   AS ref_id,
       format('%s:%s:%s', CAST(:key_prefix AS text), relationship_id, k) AS idempotency_key,
       format('%s month %s, basis payment %s', CAST(:note_label AS text), k, payment_id) AS note
FROM priced
WHERE points >= 1 AND points <= 2147483647

-- name: count_too_large_payments --
-- PAID payments (paid_at <= as_of) inside the reward months of the given relationships whose reward would
-- not fit the ledger's INT column: such a month is skipped, never written, and counted instead.
-- Only asked when the percentage can produce such a reward (:min_too_large_cents is set).
WITH relationship AS (
    {relationships}
)
SELECT count(*)
FROM relationship AS r
JOIN {payments} AS p
  ON p.user_id = r.referred_user_id
 AND p.status = 'PAID'
 AND p.paid_at >= r.rewarded_at + make_interval(months => CAST(:first_month AS int))
 AND p.paid_at <  r.rewarded_at + make_interval(months => CAST(:last_month AS int) + 1)
 AND p.paid_at <= CAST(:as_of AS timestamptz)
 AND p.amount_cents >= CAST(:min_too_large_cents AS bigint);
