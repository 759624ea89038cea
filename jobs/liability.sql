-- The liability schedule, breakage and one user's lots (jobs/liability.py; docs/rules.md "Expiry: lots").
-- Lots as expire-points counts them: a positive row is a lot, a reward's lot less its own clawback
-- (recorded beside the reward in referral_rewards; its rewarded_at is the reward row's created_at, its
-- clawed_back_at the clawback row's); every other debit consumes the oldest lots first. Only rows dated
-- at or before the as-of take part.

-- name: schedule_bounds --
-- The cutoffs of the runs that expire each part: the as-of's own (due now), then the first instant of
-- each of the next `horizon` months, each less N months (a first instant less N months is a first instant,
-- so no month-end clamping moves a bound). PostgreSQL month arithmetic in UTC, the session time zone.
SELECT array_agg(cutoff ORDER BY k) AS bounds
FROM (
    SELECT 0 AS k, CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int)) AS cutoff
    UNION ALL
    SELECT k, date_trunc('month', CAST(:as_of AS timestamptz)) + make_interval(months => k - CAST(:months AS int))
    FROM generate_series(1, CAST(:horizon AS int)) AS k
) AS cutoffs;

-- name: schedule --
-- One pass over the ledger dated up to the as-of. Per user, the lots are summed by bucket b of their
-- created_at among the bounds (width_bucket: 0 before the first bound, i in [bound i, bound i + 1),
-- horizon + 1 after the last); the debits that consume lots are the row b = -1. With the buckets in
-- order, `running` is what stays of the user's lots up to the end of bucket b once the debits took
-- the oldest, and the user's part of bucket b is greatest(running, 0) - greatest(running before b, 0):
-- exactly what expire-points would expire when the bucket's bound passes (its due is floored at 0 per
-- user). Bucket 0 is due now, bucket i expires in month i of the schedule, the last bucket later.
-- The ledger sums hold both a reward and its own clawback, so the clawed-back points (from
-- referral_rewards) come off the reward's bucket and back off the debits.
WITH amounts AS (
    SELECT ledger.user_id, ledger.b,
           ledger.points - coalesce(lot_clawbacks.points, 0) + coalesce(all_clawbacks.points, 0) AS amount
    FROM (
        SELECT t.user_id,
               CASE WHEN t.delta > 0 THEN width_bucket(t.created_at, CAST(:bounds AS timestamptz[])) ELSE -1 END AS b,
               sum(t.delta) AS points
        FROM public.user_point_transactions AS t
        WHERE t.created_at <= :as_of
        GROUP BY 1, 2
    ) AS ledger
    LEFT JOIN (
        SELECT rr.beneficiary_user_id AS user_id,
               width_bucket(rr.rewarded_at, CAST(:bounds AS timestamptz[])) AS b,
               sum(rr.clawed_back_points) AS points
        FROM public.referral_rewards AS rr
        WHERE rr.clawback_key IS NOT NULL AND rr.clawed_back_points > 0 AND rr.clawed_back_at <= :as_of
        GROUP BY 1, 2
    ) AS lot_clawbacks ON lot_clawbacks.user_id = ledger.user_id AND lot_clawbacks.b = ledger.b
    LEFT JOIN (
        SELECT rr.beneficiary_user_id AS user_id, sum(rr.clawed_back_points) AS points
        FROM public.referral_rewards AS rr
        WHERE rr.clawback_key IS NOT NULL AND rr.clawed_back_points > 0 AND rr.clawed_back_at <= :as_of
        GROUP BY 1
    ) AS all_clawbacks ON all_clawbacks.user_id = ledger.user_id AND ledger.b = -1
),
per_bucket AS (
    SELECT b, amount, sum(amount) OVER (PARTITION BY user_id ORDER BY b) AS running
    FROM amounts
)
SELECT b,
       coalesce(sum(greatest(running, 0) - greatest(running - amount, 0)) FILTER (WHERE b >= 0), 0) AS expiring,
       sum(amount) AS net
FROM per_bucket
GROUP BY b
ORDER BY b;

-- name: outstanding --
-- The points outstanding when nothing expires (REWARDS_POINTS_EXPIRY_MONTHS=0): the ledger at the as-of.
SELECT coalesce(sum(delta), 0) AS points FROM public.user_point_transactions WHERE created_at <= :as_of;

-- name: breakage --
-- Rows dated in [as_of - months, as_of): points expired (EXPIRY rows) and points issued (positive rows).
SELECT w.from_at,
       coalesce(sum(-t.delta) FILTER (WHERE t.type = 'EXPIRY'), 0) AS expired,
       coalesce(sum(t.delta) FILTER (WHERE t.delta > 0), 0)         AS issued
FROM (SELECT CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int)) AS from_at) AS w
LEFT JOIN public.user_point_transactions AS t
       ON t.created_at >= w.from_at AND t.created_at < :as_of
GROUP BY w.from_at;

-- name: user_totals --
SELECT count(*) AS rows,
       coalesce(sum(delta), 0)                                                              AS balance,
       coalesce(sum(delta) FILTER (WHERE delta > 0), 0)                                     AS earned,
       coalesce(-sum(delta) FILTER (WHERE delta < 0 AND type NOT IN ('EXPIRY', 'REFERRAL_CLAWBACK')), 0) AS spent,
       coalesce(-sum(delta) FILTER (WHERE type = 'EXPIRY'), 0)                              AS expired,
       coalesce(-sum(delta) FILTER (WHERE type = 'REFERRAL_CLAWBACK'), 0)                   AS clawed_back,
       (SELECT count(*) FROM public.user_point_transactions WHERE user_id = :user_id)       AS rows_ever
FROM public.user_point_transactions
WHERE user_id = :user_id AND created_at <= :as_of;

-- name: user_lots --
-- One user's lots at the as-of, in FIFO order, with what is left of each once the consuming debits took
-- the oldest first (so the remaining of the lots earned before a cutoff add up to expire-points' due
-- there), and when each expires: the instant after which an expire-points run expires it, `earned + N
-- months`, or, when that day was clamped to a shorter month's end (Jan 31 + 1 month = Feb 28), the last
-- instant of that month (a run on Feb 28 has its cutoff on Jan 28: the lot of Jan 31 stays until the run
-- of Mar 1, whose cutoff Feb 1 passes it). explain's points expiring next are read from here.
WITH ledger AS (
    SELECT t.id, t.created_at, t.delta, t.type, t.idempotency_key
    FROM public.user_point_transactions AS t
    WHERE t.user_id = :user_id AND t.created_at <= :as_of
), own_clawback AS (
    SELECT rr.idempotency_key AS lot_key, rr.clawed_back_points AS points
    FROM public.referral_rewards AS rr
    WHERE rr.beneficiary_user_id = :user_id AND rr.clawback_key IS NOT NULL AND rr.clawed_back_points > 0
      AND rr.clawed_back_at <= :as_of
), consumed AS (
    SELECT coalesce(-sum(l.delta) FILTER (WHERE l.delta < 0), 0)
         - (SELECT coalesce(sum(o.points), 0) FROM own_clawback AS o) AS points
    FROM ledger AS l
), lot AS (
    SELECT l.id, l.created_at, l.type, l.delta AS points, l.delta - coalesce(o.points, 0) AS size,
           sum(l.delta - coalesce(o.points, 0)) OVER (ORDER BY l.created_at, l.id) AS earned_through,
           l.created_at + make_interval(months => CAST(:months AS int)) AS plus_months
    FROM ledger AS l
    LEFT JOIN own_clawback AS o ON o.lot_key = l.idempotency_key
    WHERE l.delta > 0
)
SELECT lot.created_at AS earned_at, lot.type, lot.points, lot.size,
       greatest(0, least(lot.size, lot.earned_through - consumed.points)) AS remaining,
       CASE WHEN CAST(:months AS int) = 0 THEN NULL
            WHEN lot.plus_months - make_interval(months => CAST(:months AS int)) = lot.created_at THEN lot.plus_months
            ELSE date_trunc('month', lot.plus_months) + interval '1 month' - interval '1 microsecond'
       END AS expires_at
FROM lot CROSS JOIN consumed
ORDER BY lot.created_at, lot.id;
