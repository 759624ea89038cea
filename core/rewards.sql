-- What recurring-rewards and level2-rewards share: month windows, basis payments, amounts, and the
-- scan restriction. `{payments}` is the validated, quoted REWARDS_PAYMENTS_TABLE (a table or a view).

-- name: scan_bounds --
-- H is the latest as-of of this job's successful real runs made with the same number of reward
-- months and the same payments table (after a change, one run looks at all history again).
-- Months that ended at or before scan_floor = least(H, as_of) - the late-payment margin were
-- complete in an earlier run; a relationship needs a look only when its last month ends after
-- scan_floor, and scan_from = scan_floor - span months bounds those from below (core/rewards.py
-- says why that is safe). With no such run yet, both are NULL: look at all history.
WITH high AS (
    SELECT max(as_of) AS high_water
    FROM public.job_runs
    WHERE job = :job AND status = 'SUCCEEDED' AND NOT dry_run
      AND settings ->> CAST(:months_variable AS text) = CAST(:months AS text)
      AND settings ->> 'REWARDS_PAYMENTS_TABLE' = CAST(:payments_table AS text)
),
bound AS (
    SELECT high_water,
           CASE WHEN high_water IS NOT NULL THEN
               least(high_water, CAST(:as_of AS timestamptz)) - make_interval(days => :margin_days)
           END AS scan_floor
    FROM high
)
SELECT high_water, scan_floor, scan_floor - make_interval(months => :span_months) AS scan_from
FROM bound;

-- name: reward_candidates --
-- (A fragment: no semicolon, it is embedded in the ledger writer's statement.)
-- The ledger rows earned by the given relationships (columns id, referred_user_id, rewarded_at,
-- beneficiary_user_id), one per paid month:
--   month_to_check: each relationship's months k in first_month .. last_month, month k being
--     [rewarded_at + k months, rewarded_at + (k+1) months) in UTC, that have started by as_of and
--     end after scan_floor (the others were complete in an earlier run);
--   basis: a month is paid when the referred user has a PAID payment in it with paid_at <= as_of;
--     its basis payment is the earliest (by paid_at, then id);
--   priced: fixed_points plus floor(amount_cents * percent/100 * points_per_usd/100), exactly in
--     numeric (div() truncates, which is floor for amounts >= 0).
-- A reward of 0 points is not written (delta 0: the writer drops it), nor one too large for the
-- ledger's INT column (also delta 0: it cannot be stored, and it must not fail every run).
WITH relationship AS (
    {relationships}
),
month_to_check AS (
    SELECT r.id AS relationship_id, r.referred_user_id, r.beneficiary_user_id, m.k,
           r.rewarded_at + make_interval(months => m.k)     AS month_start,
           r.rewarded_at + make_interval(months => m.k + 1) AS month_end
    FROM relationship AS r
    CROSS JOIN LATERAL generate_series(CAST(:first_month AS int), CAST(:last_month AS int)) AS m(k)
    WHERE r.rewarded_at + make_interval(months => m.k) <= CAST(:as_of AS timestamptz)
      AND r.rewarded_at + make_interval(months => m.k + 1)
          > coalesce(CAST(:scan_floor AS timestamptz), '-infinity')
),
basis AS (
    SELECT month.*, payment.id AS payment_id, payment.amount_cents
    FROM month_to_check AS month
    CROSS JOIN LATERAL (
        SELECT p.id, p.amount_cents
        FROM {payments} AS p
        WHERE p.user_id = month.referred_user_id
          AND p.status = 'PAID'
          AND p.paid_at >= month.month_start
          AND p.paid_at <  month.month_end
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
SELECT beneficiary_user_id                                                     AS user_id,
       CASE WHEN points BETWEEN 1 AND 2147483647 THEN CAST(points AS int) ELSE 0 END AS delta,
       CAST(:ledger_type AS text)                                              AS type,
       relationship_id                                                         AS ref_id,
       format('%s:%s:%s', CAST(:key_prefix AS text), relationship_id, k)       AS idempotency_key,
       format('%s month %s, basis payment %s', CAST(:note_label AS text), k, payment_id) AS note
FROM priced
