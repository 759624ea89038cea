-- The liability schedule, breakage and one user's lots (jobs/liability.py; docs/rules.md "Expiry: lots").
-- Lots as expire-points counts them: a positive row is a lot, a reward's lot less its own clawback
-- (recorded beside the reward in referral_rewards; its rewarded_at is the reward row's created_at, its
-- clawed_back_at the clawback row's); every other debit consumes the oldest lots first. Only rows dated
-- up to the as-of take part (expire-points also counts debits dated after its as-of: none at the time).

-- name: schedule_bounds --
-- The cutoffs of the runs that expire each part: the as-of's own (due now), then the first instant of
-- each of the next `horizon` months (12: the schedule statement reads c0 .. c12), each less N months
-- (a first instant less N months is a first instant, so no month-end clamping moves a bound); and where
-- the breakage's months begin. PostgreSQL month arithmetic in UTC, the session time zone.
SELECT array_agg(cutoff ORDER BY k) AS bounds,
       CAST(:as_of AS timestamptz) - make_interval(months => CAST(:breakage_months AS int)) AS breakage_from
FROM (
    SELECT 0 AS k, CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int)) AS cutoff
    UNION ALL
    SELECT k, date_trunc('month', CAST(:as_of AS timestamptz)) + make_interval(months => k - CAST(:months AS int))
    FROM generate_series(1, CAST(:horizon AS int)) AS k
) AS cutoffs;

-- name: schedule --
-- One pass over the ledger dated up to the as-of (dated_through: the as-of, or the instant before it for
-- a month's close, whose closing is the ledger dated before the next month's first instant):
-- expire-points' due (jobs/expire_points.sql plan_run, the same expression) of every user at each of
-- the 13 cutoffs c0 (the as-of's own) .. c12 (schedule_bounds), summed over the users:
-- due = lots earned before the cutoff + every debit (negative) + the clawed-back points of rewards
-- dated at or after the cutoff (a reward's own clawback cancels its own lot: the ledger sums hold both,
-- so the clawbacks of the lots not yet counted are given back), floored at 0 per user.
-- due_0 is due now; what the run at the first instant after month i expires is due_(i+1) - due_i
-- (a user's due never falls as the cutoff moves on, so the floors keep it exact per user).
-- The same pass sums the breakage: rows dated in [breakage_from, as_of), points expired (EXPIRY rows)
-- and points issued (positive rows).
WITH ledger AS (
    SELECT t.user_id,
           sum(t.delta) AS balance,
           coalesce(sum(t.delta) FILTER (WHERE t.delta < 0), 0) AS debits,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c0), 0) AS earned_0,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c1), 0) AS earned_1,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c2), 0) AS earned_2,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c3), 0) AS earned_3,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c4), 0) AS earned_4,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c5), 0) AS earned_5,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c6), 0) AS earned_6,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c7), 0) AS earned_7,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c8), 0) AS earned_8,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c9), 0) AS earned_9,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c10), 0) AS earned_10,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c11), 0) AS earned_11,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < :c12), 0) AS earned_12,
           coalesce(sum(-t.delta) FILTER (WHERE t.type = 'EXPIRY' AND t.created_at >= :breakage_from
                                                                AND t.created_at < :as_of), 0) AS expired,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at >= :breakage_from
                                                           AND t.created_at < :as_of), 0) AS issued
    FROM public.user_point_transactions AS t
    WHERE t.created_at <= :dated_through
    GROUP BY t.user_id
), young_clawbacks AS (
    SELECT rr.beneficiary_user_id AS user_id,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c0), 0) AS young_0,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c1), 0) AS young_1,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c2), 0) AS young_2,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c3), 0) AS young_3,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c4), 0) AS young_4,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c5), 0) AS young_5,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c6), 0) AS young_6,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c7), 0) AS young_7,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c8), 0) AS young_8,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c9), 0) AS young_9,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c10), 0) AS young_10,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c11), 0) AS young_11,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= :c12), 0) AS young_12
    FROM public.referral_rewards AS rr
    WHERE rr.clawback_key IS NOT NULL AND rr.clawed_back_points > 0 AND rr.clawed_back_at <= :dated_through
    GROUP BY rr.beneficiary_user_id
)
SELECT coalesce(sum(l.balance), 0) AS outstanding,
       coalesce(sum(l.expired), 0) AS expired, coalesce(sum(l.issued), 0) AS issued,
       sum(greatest(l.earned_0 + l.debits + coalesce(c.young_0, 0), 0)) AS due_0,
       sum(greatest(l.earned_1 + l.debits + coalesce(c.young_1, 0), 0)) AS due_1,
       sum(greatest(l.earned_2 + l.debits + coalesce(c.young_2, 0), 0)) AS due_2,
       sum(greatest(l.earned_3 + l.debits + coalesce(c.young_3, 0), 0)) AS due_3,
       sum(greatest(l.earned_4 + l.debits + coalesce(c.young_4, 0), 0)) AS due_4,
       sum(greatest(l.earned_5 + l.debits + coalesce(c.young_5, 0), 0)) AS due_5,
       sum(greatest(l.earned_6 + l.debits + coalesce(c.young_6, 0), 0)) AS due_6,
       sum(greatest(l.earned_7 + l.debits + coalesce(c.young_7, 0), 0)) AS due_7,
       sum(greatest(l.earned_8 + l.debits + coalesce(c.young_8, 0), 0)) AS due_8,
       sum(greatest(l.earned_9 + l.debits + coalesce(c.young_9, 0), 0)) AS due_9,
       sum(greatest(l.earned_10 + l.debits + coalesce(c.young_10, 0), 0)) AS due_10,
       sum(greatest(l.earned_11 + l.debits + coalesce(c.young_11, 0), 0)) AS due_11,
       sum(greatest(l.earned_12 + l.debits + coalesce(c.young_12, 0), 0)) AS due_12
FROM ledger AS l
LEFT JOIN young_clawbacks AS c ON c.user_id = l.user_id;

-- name: outstanding --
-- The points outstanding when nothing expires (REWARDS_POINTS_EXPIRY_MONTHS=0): the ledger at the as-of
-- (dated_through as for the schedule), and in the same pass the breakage, as the schedule sums it.
SELECT coalesce(sum(delta), 0) AS outstanding,
       coalesce(sum(-delta) FILTER (WHERE type = 'EXPIRY' AND created_at >= :breakage_from AND created_at < :as_of), 0)
           AS expired,
       coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at >= :breakage_from AND created_at < :as_of), 0)
           AS issued
FROM public.user_point_transactions
WHERE created_at <= :dated_through;

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
