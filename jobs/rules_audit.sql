-- The rules audit (SPEC v3 "The rules audit"): docs/rules.md read a second time, written apart from the
-- jobs' SQL (jobs/rewards.sql, expire_points.sql are neither called nor copied). Every statement returns
-- findings as (kind, user_id, referred_user_id, level, month, reward_key, points, detail). Set-based: each
-- reads its tables once and joins by hash; on Citus the ledger and the feed are joined by user.
-- {feed} is the payments feed (REWARDS_PAYMENTS_TABLE, quoted).

-- name: last_runs --
-- The latest (by as-of, then id) successful real run of each job the invariant is stated after, with
-- the settings it recorded.
SELECT DISTINCT ON (job) job, id, as_of, settings, finished_at
FROM public.job_runs
WHERE job IN ('recurring-rewards', 'level2-rewards', 'expire-points') AND status = 'SUCCEEDED' AND NOT dry_run
ORDER BY job, as_of DESC, id DESC;

-- name: reward_findings --
-- The reward invariant of level :level after its run at :as_of (docs/rules.md "The invariant"), with
-- counts_until = :as_of − :hold_days days, months :first_month … :last_month, and the price of a basis of
-- amount a: :fixed_points, or floor(a × :percent/100 × :points_per_usd/100).
WITH feed_rows AS (
    SELECT id, user_id, amount_cents, status, paid_at
    FROM {feed}
),
usable AS (  -- "usable feed row": every field set, amount >= 0, a known status, an id no other row has
    SELECT f.*
    FROM feed_rows f
    WHERE f.id IS NOT NULL AND f.user_id IS NOT NULL AND f.amount_cents IS NOT NULL AND f.paid_at IS NOT NULL
      AND f.amount_cents >= 0 AND f.status IN ('PAID', 'REFUNDED', 'FAILED')
      AND f.id NOT IN (SELECT id FROM feed_rows WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1)
),
earning AS (  -- the current relationship of each referred user, earning at this level, and its beneficiary
    SELECT r.referred_user_id, r.rewarded_at, r.level AS relationship_level, r.referrer_user_id,
           CASE WHEN :level = 1 THEN r.referrer_user_id
                WHEN r.level = 2 THEN r.referrer_user_id
                ELSE parent.referrer_user_id END AS beneficiary
    FROM public.user_referral_relationships r
    LEFT JOIN public.user_referral_relationships parent
           ON :level = 2 AND r.level = 1 AND parent.referred_user_id = r.referrer_user_id
          AND parent.level = 1 AND parent.status IN ('ACTIVE', 'REWARDED')
    WHERE r.status = 'REWARDED' AND r.rewarded_at IS NOT NULL AND (:level = 2 OR r.level = 1)
),
earning_beneficiary AS (  -- none when it is the referred user, or (level 2 of a level-1 row) its referrer
    SELECT e.*
    FROM earning e
    WHERE e.beneficiary IS NOT NULL AND e.beneficiary <> e.referred_user_id
      AND NOT (:level = 2 AND e.relationship_level = 1 AND e.beneficiary = e.referrer_user_id)
),
payment_months AS (  -- each PAID payment of an earning month, its month k on the grid (month arithmetic)
    SELECT p.user_id, p.id, p.paid_at, p.amount_cents,
           CASE WHEN e.rewarded_at + make_interval(months => m.k0) <= p.paid_at THEN m.k0 ELSE m.k0 - 1 END AS k
    FROM usable p
    JOIN earning_beneficiary e ON e.referred_user_id = p.user_id
    CROSS JOIN LATERAL (SELECT CAST(12 * (extract(year FROM p.paid_at) - extract(year FROM e.rewarded_at))
                                    + extract(month FROM p.paid_at) - extract(month FROM e.rewarded_at) AS int) AS k0) m
    WHERE p.status = 'PAID' AND p.paid_at >= e.rewarded_at
      AND p.paid_at <= CAST(:as_of AS timestamptz) - make_interval(days => :hold_days)
),
basis AS (  -- the earliest payment of each paid month in range, and its price
    SELECT user_id, k, id, amount_cents,
           CASE WHEN CAST(:fixed_points AS bigint) IS NOT NULL THEN CAST(:fixed_points AS bigint)
                ELSE CAST(floor(amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric) / 10000)
                          AS bigint) END AS price
    FROM (SELECT pm.*, row_number() OVER (PARTITION BY user_id, k ORDER BY paid_at, id) AS nth
          FROM payment_months pm
          WHERE k BETWEEN :first_month AND :last_month) ranked
    WHERE nth = 1
),
rewards AS (
    SELECT *
    FROM public.referral_rewards
    WHERE level = :level AND rewarded_at <= :as_of
),
standing AS (
    SELECT * FROM rewards WHERE clawback_key IS NULL
)
-- a paid month with a price above 0 and no standing reward
SELECT 'REWARD_INVARIANT' AS kind, CAST(NULL AS uuid) AS user_id, b.user_id AS referred_user_id,
       :level AS level, b.k AS month, CAST(NULL AS text) AS reward_key, b.price AS points,
       format('paid month (payment %s) with a price of %s points has no standing reward', b.id, b.price) AS detail
FROM basis b
WHERE b.price > 0
  AND NOT EXISTS (SELECT 1 FROM standing s WHERE s.referred_user_id = b.user_id AND s.month = b.k)
UNION ALL
-- more than one standing reward for one month
SELECT 'REWARD_INVARIANT', CAST(min(CAST(s.beneficiary_user_id AS text)) AS uuid), s.referred_user_id, :level, s.month,
       string_agg(s.idempotency_key, ' ' ORDER BY s.idempotency_key), sum(s.points),
       format('%s standing rewards for one month (a month pays once)', count(*))
FROM standing s
GROUP BY s.referred_user_id, s.month
HAVING count(*) > 1
UNION ALL
-- a standing reward whose basis does not hold: not a usable PAID feed row at the recorded amount, in its month
SELECT 'REWARD_INVARIANT', s.beneficiary_user_id, s.referred_user_id, :level, s.month, s.idempotency_key, s.points,
       CASE WHEN p.id IS NULL THEN format('basis payment %s is not a usable feed row', s.payment_id)
            WHEN p.status <> 'PAID' THEN format('basis payment %s is %s', s.payment_id, p.status)
            WHEN p.amount_cents IS DISTINCT FROM s.basis_amount_cents
                THEN format('basis payment %s is now %s cents, rewarded on %s', s.payment_id, p.amount_cents,
                            s.basis_amount_cents)
            ELSE format('basis payment %s (paid %s) is no longer in month %s', s.payment_id, p.paid_at, s.month) END
FROM standing s
LEFT JOIN usable p ON p.id = s.payment_id
LEFT JOIN public.user_referral_relationships r ON r.referred_user_id = s.referred_user_id
WHERE p.id IS NULL OR p.status <> 'PAID' OR p.amount_cents IS DISTINCT FROM s.basis_amount_cents
   OR (r.rewarded_at IS NOT NULL
       AND NOT (p.paid_at >= r.rewarded_at + make_interval(months => s.month)
                AND p.paid_at < r.rewarded_at + make_interval(months => s.month + 1)));

-- name: reward_ledger_findings --
-- Every reward key of the ledger (key :prefix:…, whatever its type) against its record and the rule:
-- REWARD_KEY_MISMATCH when the key has no referral_rewards record, holds another type, credits another
-- user or another amount than the record, or when the record's points are not what the rule gives for
-- its basis under the settings of the run that wrote it (:prices, one row per run: its fixed points or
-- percent and points per USD); a key that exists with another amount is never a month paid. And
-- REWARD_INVARIANT for a recorded reward with no credit in the ledger.
WITH credits AS (
    SELECT user_id, idempotency_key, delta, type
    FROM public.user_point_transactions
    WHERE idempotency_key LIKE :prefix || ':%'
),
records AS (
    SELECT idempotency_key, beneficiary_user_id, referred_user_id, month, points, basis_amount_cents, run_id
    FROM public.referral_rewards
    WHERE level = :level
),
prices AS (
    SELECT run_id, fixed_points, percent, points_per_usd
    FROM jsonb_to_recordset(CAST(:prices AS jsonb))
         AS p(run_id bigint, fixed_points bigint, percent numeric, points_per_usd numeric)
),
priced AS (
    SELECT r.*,
           CASE WHEN p.run_id IS NULL OR r.basis_amount_cents IS NULL THEN NULL
                WHEN p.fixed_points IS NOT NULL THEN p.fixed_points
                ELSE CAST(floor(r.basis_amount_cents * p.percent * p.points_per_usd / 10000) AS bigint) END AS price
    FROM records r
    LEFT JOIN prices p ON p.run_id = r.run_id
)
SELECT CASE WHEN c.idempotency_key IS NULL THEN 'REWARD_INVARIANT' ELSE 'REWARD_KEY_MISMATCH' END AS kind,
       coalesce(c.user_id, r.beneficiary_user_id) AS user_id,
       r.referred_user_id, :level AS level, r.month, coalesce(c.idempotency_key, r.idempotency_key) AS reward_key,
       coalesce(c.delta, r.points) AS points,
       CASE WHEN c.idempotency_key IS NULL THEN 'a recorded reward with no credit in the ledger'
            WHEN r.idempotency_key IS NULL
                THEN format('a %s row of %s points under a reward key, with no referral_rewards record', c.type, c.delta)
            WHEN c.type <> :ledger_type THEN format('the reward key holds a %s row, not %s', c.type, :ledger_type)
            WHEN c.user_id <> r.beneficiary_user_id THEN 'the ledger credits another user than the record'
            WHEN c.delta <> r.points THEN format('the ledger credits %s points, the record says %s', c.delta, r.points)
            ELSE format('the key holds %s points where the rule gives %s for a basis of %s cents (settings of run %s)',
                        r.points, r.price, r.basis_amount_cents, r.run_id) END AS detail
FROM credits c
FULL JOIN priced r ON r.idempotency_key = c.idempotency_key
WHERE r.idempotency_key IS NULL OR c.idempotency_key IS NULL OR c.type <> :ledger_type
   OR c.user_id <> r.beneficiary_user_id OR c.delta <> r.points OR r.points <> r.price;

-- name: reward_runs --
-- The runs that wrote this level's rewards (their settings price each reward).
SELECT DISTINCT run_id FROM public.referral_rewards WHERE level = :level AND run_id IS NOT NULL;

-- name: run_settings --
SELECT id, settings FROM public.job_runs WHERE id = ANY(CAST(:run_ids AS bigint[]));

-- name: recovery_findings --
-- docs/rules.md "Recovery": per clawed-back reward, taken + expired + unrecovered = points and
-- 0 <= recovered <= unrecovered; per beneficiary, the recover: rows of the ledger add up to the points
-- recorded as recovered; and (recovery on, :check_balance) per beneficiary and level, outstanding > 0
-- only where the ledger balance is 0 (after the level's run at :as_of_1 / :as_of_2; rows dated after it,
-- and the other level's credits of a later run, are left out).
WITH clawed AS (
    SELECT * FROM public.referral_rewards WHERE clawback_key IS NOT NULL
),
recovered_rows AS (
    SELECT user_id, -sum(delta) AS points
    FROM public.user_point_transactions
    WHERE type = 'REFERRAL_CLAWBACK' AND idempotency_key LIKE 'recover:%'
    GROUP BY user_id
),
recorded AS (
    SELECT beneficiary_user_id AS user_id, sum(recovered_points) AS points
    FROM clawed
    GROUP BY beneficiary_user_id
),
outstanding AS (
    SELECT beneficiary_user_id AS user_id, level, sum(unrecovered_points - recovered_points) AS points
    FROM clawed
    WHERE (level = 1 AND clawed_back_at <= :as_of_1) OR (level = 2 AND clawed_back_at <= :as_of_2)
    GROUP BY beneficiary_user_id, level
    HAVING sum(unrecovered_points - recovered_points) > 0
),
-- The balance the level's run could take from: its rows dated at or before its as-of, but never more
-- than the balance now (a run for a past as-of prices against the ledger as it is when it runs, rows
-- dated after its as-of included: points spent since cannot be taken back).
balances AS (
    SELECT t.user_id, o.level,
           least(coalesce(sum(t.delta) FILTER (
                     WHERE t.created_at <= CASE o.level WHEN 1 THEN CAST(:as_of_1 AS timestamptz)
                                                        ELSE CAST(:as_of_2 AS timestamptz) END
                       AND NOT (o.level = 1 AND :level_2_after AND t.type = 'REFERRAL_L2' AND t.created_at = :as_of_1)
                       AND NOT (o.level = 2 AND :level_1_after AND t.type = 'REFERRAL_RECURRING'
                                AND t.created_at = :as_of_2)), 0),
                 sum(t.delta)) AS balance
    FROM public.user_point_transactions t
    JOIN outstanding o ON o.user_id = t.user_id
    GROUP BY t.user_id, o.level
)
SELECT 'RECOVERY_INVARIANT' AS kind, c.beneficiary_user_id AS user_id, c.referred_user_id, c.level, c.month,
       c.idempotency_key AS reward_key, c.unrecovered_points - c.recovered_points AS points,
       format('clawback parts: %s taken + %s expired + %s unrecovered of %s points, %s recovered',
              c.clawed_back_points, c.expired_points, c.unrecovered_points, c.points, c.recovered_points) AS detail
FROM clawed c
WHERE c.clawed_back_points + c.expired_points + c.unrecovered_points <> c.points
   OR c.recovered_points < 0 OR c.recovered_points > c.unrecovered_points OR c.unrecovered_points < 0
UNION ALL
SELECT 'RECOVERY_INVARIANT', coalesce(l.user_id, r.user_id), NULL, NULL, NULL, NULL,
       coalesce(l.points, 0) - coalesce(r.points, 0),
       format('recover: rows take %s points, the clawbacks record %s recovered', coalesce(l.points, 0),
              coalesce(r.points, 0))
FROM recovered_rows l
FULL JOIN recorded r ON r.user_id = l.user_id
WHERE coalesce(l.points, 0) <> coalesce(r.points, 0)
UNION ALL
SELECT 'RECOVERY_INVARIANT', o.user_id, NULL, o.level, NULL, NULL, o.points,
       format('%s points outstanding at level %s while the balance is %s (recovery is on)', o.points, o.level,
              b.balance)
FROM outstanding o
JOIN balances b ON b.user_id = o.user_id AND b.level = o.level
WHERE :check_balance AND b.balance > 0;

-- name: expiry_findings --
-- docs/rules.md "Expiry: lots" after expire-points ran at :as_of with cutoff :cutoff: for every user,
-- due = Σ lots dated before the cutoff (each less its own clawback) − Σ |consuming debits| (every
-- negative row but own clawbacks, whatever its date) must be <= 0.
WITH own_clawbacks AS (  -- a clawback row of a lot of the same user's ledger
    SELECT c.user_id, -c.delta AS points, lot.created_at < :cutoff AS of_old_lot
    FROM public.user_point_transactions c
    JOIN public.user_point_transactions lot
      ON lot.user_id = c.user_id AND lot.idempotency_key = substr(c.idempotency_key, 10) AND lot.delta > 0
    WHERE c.idempotency_key LIKE 'clawback:%' AND c.delta < 0
),
own AS (
    SELECT user_id, sum(points) AS points, coalesce(sum(points) FILTER (WHERE of_old_lot), 0) AS old_points
    FROM own_clawbacks
    GROUP BY user_id
),
sums AS (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < :cutoff), 0) AS old_lots,
           coalesce(-sum(delta) FILTER (WHERE delta < 0), 0)                        AS debits
    FROM public.user_point_transactions
    GROUP BY user_id
    HAVING coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < :cutoff), 0) > 0
)
SELECT 'EXPIRY_INVARIANT' AS kind, s.user_id, CAST(NULL AS uuid) AS referred_user_id, CAST(NULL AS int) AS level,
       CAST(NULL AS int) AS month, CAST(NULL AS text) AS reward_key,
       s.old_lots - coalesce(o.old_points, 0) - (s.debits - coalesce(o.points, 0)) AS points,
       format('%s points earned before %s are still unexpired after expire-points at %s',
              s.old_lots - coalesce(o.old_points, 0) - (s.debits - coalesce(o.points, 0)), :cutoff, :as_of) AS detail
FROM sums s
LEFT JOIN own o ON o.user_id = s.user_id
WHERE s.old_lots - coalesce(o.old_points, 0) - (s.debits - coalesce(o.points, 0)) > 0;

-- name: cutoff --
SELECT CAST(:as_of AS timestamptz) - make_interval(months => :months);

-- name: insert_findings --
INSERT INTO public.reconciliation_findings
       (run_id, number, kind, user_id, referred_user_id, level, month, reward_key, points, detail)
SELECT :run_id, f.number, f.kind, f.user_id, f.referred_user_id, f.level, f.month, f.reward_key, f.points, f.detail
FROM unnest(CAST(:numbers AS int[]), CAST(:kinds AS text[]), CAST(:user_ids AS uuid[]),
            CAST(:referred_user_ids AS uuid[]), CAST(:levels AS int[]), CAST(:months AS int[]),
            CAST(:reward_keys AS text[]), CAST(:points AS bigint[]), CAST(:details AS text[]))
     AS f(number, kind, user_id, referred_user_id, level, month, reward_key, points, detail);

-- name: nested_loops_off --
-- For the audit's statements only (see audit()): returns the setting it replaces.
SELECT current_setting('enable_nestloop') AS previous, set_config('enable_nestloop', 'off', true);

-- name: nested_loops_back --
SELECT set_config('enable_nestloop', :previous, true);
