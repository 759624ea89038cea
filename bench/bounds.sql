-- The bounds: each job's whole work as ONE set-based statement, written straight from SPEC.md's rules
-- (not from the jobs' code), run in one transaction and rolled back by bench/run.py. A job can hardly
-- be faster than its bound: same database, same data, no batches, no round trips.
-- Each block is named after its job (dashes as underscores) and returns one row: `rows` (what it
-- changed or found) and `points`. `{payments}` is the validated, quoted REWARDS_PAYMENTS_TABLE.
-- Writes go the SPEC's one way: ledger rows ON CONFLICT (idempotency_key) DO NOTHING, and the cache
-- moved by exactly the inserted rows, balance rows touched in user_id order.
-- Month k of a payment is found once per payment (not once per month and payment): with k0 the
-- calendar-month distance from rewarded_at to paid_at, k = k0, or k0 - 1 when rewarded_at + k0 months
-- lies after paid_at (month arithmetic only clamps days down, so one step back is always enough).

-- name: expire_pending --
WITH expired AS (
    UPDATE public.user_referral_relationships
       SET status = 'EXPIRED', expired_at = :as_of
     WHERE status = 'PENDING'
       AND created_at <= CAST(:as_of AS timestamptz) - make_interval(days => :pending_expiry_days)
    RETURNING 1
)
SELECT count(*) AS rows, 0 AS points FROM expired;

-- name: recurring_rewards --
WITH relationship AS (
    SELECT r.id, r.referrer_user_id AS beneficiary_user_id, r.referred_user_id, r.rewarded_at
    FROM public.user_referral_relationships r
    WHERE r.level = 1 AND r.status = 'REWARDED' AND r.rewarded_at IS NOT NULL
      AND r.referrer_user_id <> r.referred_user_id
),
payment_month AS (
    SELECT r.id, r.beneficiary_user_id, r.rewarded_at, p.id AS payment_id, p.paid_at, p.amount_cents,
           (extract(year FROM p.paid_at) - extract(year FROM r.rewarded_at)) * 12
           + extract(month FROM p.paid_at) - extract(month FROM r.rewarded_at) AS k0
    FROM relationship r
    JOIN {payments} p ON p.user_id = r.referred_user_id
    WHERE p.status = 'PAID' AND p.paid_at >= r.rewarded_at AND p.paid_at <= :as_of
),
basis AS (
    SELECT DISTINCT ON (id, k) id, k, beneficiary_user_id, amount_cents
    FROM (SELECT pm.*, CASE WHEN pm.rewarded_at + make_interval(months => pm.k0::int) > pm.paid_at
                            THEN pm.k0::int - 1 ELSE pm.k0::int END AS k
          FROM payment_month pm) AS m
    WHERE k BETWEEN 1 AND :recurring_months
    ORDER BY id, k, paid_at, payment_id
),
candidate AS (
    SELECT beneficiary_user_id AS user_id,
           CAST(:recurring_fixed AS numeric)
           + div(amount_cents * CAST(:recurring_percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points,
           'recurring:' || id || ':' || k AS idempotency_key, id AS ref_id
    FROM basis
),
inserted AS (
    INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)
    SELECT user_id, CAST(points AS int), 'REFERRAL_RECURRING', ref_id, idempotency_key, :as_of
    FROM candidate
    WHERE points >= 1 AND points <= 2147483647
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, delta
),
cache AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, sum(delta), sum(greatest(delta, 0)), sum(least(delta, 0)), :as_of
    FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance = b.balance + excluded.balance, total_earned = b.total_earned + excluded.total_earned,
           total_spent = b.total_spent + excluded.total_spent, updated_at = excluded.updated_at
    RETURNING 1
)
SELECT count(*) AS rows, coalesce(sum(delta), 0) AS points, (SELECT count(*) FROM cache) AS users FROM inserted;

-- name: level2_rewards --
-- The level-2 beneficiary of r (referred user C): for level 1 (B invited C), the referrer A of B's own
-- level-1 ACTIVE or REWARDED relationship; for level 2, r's referrer; none when it is C, or B for level 1.
WITH relationship AS (
    SELECT r.id, r.referred_user_id, r.rewarded_at,
           CASE WHEN r.level = 2 THEN r.referrer_user_id ELSE parent.referrer_user_id END AS beneficiary_user_id,
           r.level, r.referrer_user_id
    FROM public.user_referral_relationships r
    LEFT JOIN public.user_referral_relationships parent
           ON r.level = 1 AND parent.referred_user_id = r.referrer_user_id
          AND parent.level = 1 AND parent.status IN ('ACTIVE', 'REWARDED')
    WHERE r.status = 'REWARDED' AND r.rewarded_at IS NOT NULL
),
eligible AS (
    SELECT * FROM relationship
    WHERE beneficiary_user_id IS NOT NULL AND beneficiary_user_id <> referred_user_id
      AND (level = 2 OR beneficiary_user_id <> referrer_user_id)
),
payment_month AS (
    SELECT r.id, r.beneficiary_user_id, r.rewarded_at, p.id AS payment_id, p.paid_at, p.amount_cents,
           (extract(year FROM p.paid_at) - extract(year FROM r.rewarded_at)) * 12
           + extract(month FROM p.paid_at) - extract(month FROM r.rewarded_at) AS k0
    FROM eligible r
    JOIN {payments} p ON p.user_id = r.referred_user_id
    WHERE p.status = 'PAID' AND p.paid_at >= r.rewarded_at AND p.paid_at <= :as_of
),
basis AS (
    SELECT DISTINCT ON (id, k) id, k, beneficiary_user_id, amount_cents
    FROM (SELECT pm.*, CASE WHEN pm.rewarded_at + make_interval(months => pm.k0::int) > pm.paid_at
                            THEN pm.k0::int - 1 ELSE pm.k0::int END AS k
          FROM payment_month pm) AS m
    WHERE k BETWEEN 0 AND :l2_months - 1
    ORDER BY id, k, paid_at, payment_id
),
candidate AS (
    SELECT beneficiary_user_id AS user_id,
           CAST(:l2_fixed AS numeric)
           + div(amount_cents * CAST(:l2_percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points,
           'l2:' || id || ':' || k AS idempotency_key, id AS ref_id
    FROM basis
),
inserted AS (
    INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)
    SELECT user_id, CAST(points AS int), 'REFERRAL_L2', ref_id, idempotency_key, :as_of
    FROM candidate
    WHERE points >= 1 AND points <= 2147483647
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, delta
),
cache AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, sum(delta), sum(greatest(delta, 0)), sum(least(delta, 0)), :as_of
    FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance = b.balance + excluded.balance, total_earned = b.total_earned + excluded.total_earned,
           total_spent = b.total_spent + excluded.total_spent, updated_at = excluded.updated_at
    RETURNING 1
)
SELECT count(*) AS rows, coalesce(sum(delta), 0) AS points, (SELECT count(*) FROM cache) AS users FROM inserted;

-- name: expire_points --
-- due = (positive deltas created before as_of - N months) - (|negative deltas| created at or before as_of).
WITH per_user AS (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < CAST(:as_of AS timestamptz)
                                                                  - make_interval(months => :expiry_months)), 0)
           + coalesce(sum(delta) FILTER (WHERE delta < 0 AND created_at <= :as_of), 0) AS due
    FROM public.user_point_transactions
    GROUP BY user_id
),
inserted AS (
    INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)
    SELECT user_id, CAST(-due AS int), 'EXPIRY', NULL, 'expiry:' || user_id || ':' || CAST(:as_of_key AS text), :as_of
    FROM per_user
    WHERE due > 0
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, delta
),
cache AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, sum(delta), sum(greatest(delta, 0)), sum(least(delta, 0)), :as_of
    FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance = b.balance + excluded.balance, total_earned = b.total_earned + excluded.total_earned,
           total_spent = b.total_spent + excluded.total_spent, updated_at = excluded.updated_at
    RETURNING 1
)
SELECT count(*) AS rows, coalesce(sum(delta), 0) AS points, (SELECT count(*) FROM cache) AS users FROM inserted;

-- name: reconcile --
-- The one aggregate query: every user's ledger sums against the cache row, the discrepant users counted.
WITH ledger AS (
    SELECT user_id, sum(delta) AS balance,
           coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS earned,
           coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS spent
    FROM public.user_point_transactions
    GROUP BY user_id
),
compared AS (
    SELECT l.user_id IS NOT NULL AS in_ledger, b.user_id IS NOT NULL AS in_cache,
           b.balance, b.total_earned, b.total_spent,
           coalesce(l.balance, 0) AS ledger_balance, coalesce(l.earned, 0) AS ledger_earned,
           coalesce(l.spent, 0) AS ledger_spent
    FROM ledger l
    FULL JOIN public.user_point_balances b ON b.user_id = l.user_id
)
SELECT count(*) FILTER (WHERE (in_ledger AND NOT in_cache)
                           OR (in_cache AND NOT in_ledger AND (balance <> 0 OR total_earned <> 0 OR total_spent <> 0))
                           OR (in_ledger AND in_cache AND (balance, total_earned, total_spent)
                                                          <> (ledger_balance, ledger_earned, ledger_spent))
                           OR (in_cache AND balance <> total_earned + total_spent)
                           OR ledger_balance < 0) AS rows,
       coalesce(sum(ledger_balance), 0) AS points,
       count(*) AS users
FROM compared;

-- name: expiring_soon --
-- The bound of expiring-soon: one pass over the ledger grouped by user (E(as_of), D, the points
-- crossing a cutoff in the 30-day window), as jobs/expiring_soon.sql's first step does.
SELECT count(*) AS rows, coalesce(sum(crossing), 0) AS points, count(*) AS users
FROM (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)), 0) AS earned_before,
           coalesce(-sum(delta) FILTER (WHERE delta < 0), 0) AS debited,
           coalesce(sum(delta) FILTER (WHERE delta > 0
                                         AND created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)
                                         AND created_at < CAST(:as_of AS timestamptz) + interval '30 days' - make_interval(months => :expiry_months)), 0) AS crossing
    FROM public.user_point_transactions
    GROUP BY user_id
) AS per_user
WHERE crossing > 0 AND earned_before + crossing > debited;
