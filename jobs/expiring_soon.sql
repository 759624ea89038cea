-- expiring-soon: the points that will expire in (as_of, as_of + notice days], per user and UTC day.

-- name: expiring --
-- Only a user with an earning row dated in the crossing window [as_of - N months, last cutoff) can have
-- points expiring in the window. Their whole ledgers are summed in one pass in user order (E(as_of), D,
-- the balance, the points crossing a cutoff), the users found by date (migration 013's
-- idx_upt_earned_created) and met as a semi-join, which PostgreSQL runs with parallel workers over the
-- covering idx_upt_user_created_delta. The window's earning rows are then summed per user and bound
-- ("the first bound whose cutoff passes the row"). Bounds are as_of, each UTC midnight inside the window
-- and the window's end; a bound's cutoff is `t - N months`. A cutoff can step back at a month end
-- (Mar 29 00:00 - 1 month = Feb 28 00:00, before Mar 28 12:00 - 1 month), so a row's bound is found
-- among the cutoffs reached so far (a running maximum, sorted, which width_bucket searches): what
-- expire-points would have expired at an earlier bound stays expired, and no point is counted twice.
-- Cutoffs never decrease from one midnight to the next, and the window's end has as_of's time of day,
-- so the last cutoff is the greatest. The window's two cutoffs are spelled out where they are used, not
-- read from a CTE: the planner then sees constants, and estimates the index by date (joined from a CTE,
-- PostgreSQL 15 read the whole user index instead).
WITH bounds AS (
    SELECT CAST(row_number() OVER (ORDER BY t) - 1 AS int) AS k, t,
           t - make_interval(months => :months) AS cutoff
    FROM (
        SELECT CAST(:as_of AS timestamptz) AS t
        UNION
        SELECT generate_series(date_trunc('day', CAST(:as_of AS timestamptz)) + interval '1 day',
                               CAST(:window_end AS timestamptz), interval '1 day')
        UNION
        SELECT CAST(:window_end AS timestamptz)
    ) AS instants
),
-- cutoffs[k + 1]: the greatest cutoff of bounds 0..k; instants[k + 1]: bound k's instant. A row dated x
-- in the crossing window is on bound width_bucket(x, cutoffs): the number of cutoffs reached at or
-- before x, which is the first k whose cutoff passes x.
thresholds AS (
    SELECT array_agg(reached ORDER BY k) AS cutoffs, array_agg(t ORDER BY k) AS instants
    FROM (SELECT k, t, max(cutoff) OVER (ORDER BY k) AS reached FROM bounds) AS running
),
ledger_per_user AS (
    SELECT t.user_id,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < CAST(:as_of AS timestamptz) - make_interval(months => :months)), 0)
             AS earned_before,
           coalesce(-sum(t.delta) FILTER (WHERE t.delta < 0), 0) AS debited,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0
                                           AND t.created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :months)
                                           AND t.created_at < CAST(:window_end AS timestamptz) - make_interval(months => :months)), 0)
             AS crossing,
           sum(t.delta) AS balance
    FROM public.user_point_transactions AS t
    WHERE t.user_id IN (SELECT c.user_id
                        FROM public.user_point_transactions AS c
                        WHERE c.delta > 0
                          AND c.created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :months)
                          AND c.created_at < CAST(:window_end AS timestamptz) - make_interval(months => :months))
    GROUP BY t.user_id
),
-- Lots as expire-points counts them (docs/rules.md): a reward's lot less its own clawback, which is no
-- debit. The ledger sums above hold both, so they are corrected by the clawed-back points recorded
-- beside each reward in referral_rewards, by its rewarded_at (the reward row's created_at), as
-- expire-points reads them: before the window (-1), on bound k, or after the window (-3).
clawback_buckets AS (
    SELECT rr.beneficiary_user_id AS user_id,
           CASE WHEN rr.rewarded_at < CAST(:as_of AS timestamptz) - make_interval(months => :months) THEN -1
                WHEN rr.rewarded_at >= CAST(:window_end AS timestamptz) - make_interval(months => :months) THEN -3
                ELSE width_bucket(rr.rewarded_at, (SELECT cutoffs FROM thresholds)) END AS k,
           CAST(sum(rr.clawed_back_points) AS bigint) AS points
    FROM public.referral_rewards AS rr
    WHERE rr.clawed_back_points > 0
    GROUP BY 1, 2
),
own_clawbacks AS (
    SELECT user_id,
           CAST(sum(points) AS bigint)                                     AS all_points,
           CAST(coalesce(sum(points) FILTER (WHERE k = -1), 0) AS bigint) AS before_points,
           CAST(coalesce(sum(points) FILTER (WHERE k >= 0), 0) AS bigint) AS crossing_points
    FROM clawback_buckets
    GROUP BY user_id
),
candidates AS (  -- users with points crossing a cutoff, some of which expire (E + crossing > D)
    SELECT l.user_id,
           l.earned_before - coalesce(c.before_points, 0) AS earned_before,
           l.debited - coalesce(c.all_points, 0)          AS debited,
           l.balance
    FROM ledger_per_user AS l
    LEFT JOIN own_clawbacks AS c ON c.user_id = l.user_id
    WHERE l.crossing - coalesce(c.crossing_points, 0) > 0
      AND l.earned_before - coalesce(c.before_points, 0) + l.crossing - coalesce(c.crossing_points, 0)
          > l.debited - coalesce(c.all_points, 0)
),
crossing_by_bound AS (  -- the window's earning rows, per user and bound
    SELECT t.user_id, width_bucket(t.created_at, (SELECT cutoffs FROM thresholds)) AS k, sum(t.delta) AS points
    FROM public.user_point_transactions AS t
    WHERE t.delta > 0
      AND t.created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :months)
      AND t.created_at < CAST(:window_end AS timestamptz) - make_interval(months => :months)
    GROUP BY 1, 2
),
expiring_by AS (  -- X(t_k) at each bound where a lot crosses
    SELECT l.user_id, l.k, c.balance,
           greatest(0, c.earned_before - c.debited
                       + sum(l.points - coalesce(cb.points, 0)) OVER (PARTITION BY l.user_id ORDER BY l.k))
             - greatest(0, c.earned_before - c.debited) AS expired_by
    FROM crossing_by_bound AS l
    JOIN candidates AS c ON c.user_id = l.user_id
    LEFT JOIN clawback_buckets AS cb ON cb.user_id = l.user_id AND cb.k = l.k
),
per_day AS (  -- X(t_k) - X(t_(k-1)): the points expiring in (t_(k-1), t_k], the UTC day of t_(k-1)
    SELECT user_id, k, balance,
           expired_by - coalesce(lag(expired_by) OVER (PARTITION BY user_id ORDER BY k), 0) AS points
    FROM expiring_by
),
shown AS (
    SELECT user_id, points, CAST((SELECT instants FROM thresholds)[k] AS date) AS expires_on, balance,
           row_number() OVER (PARTITION BY user_id ORDER BY k) = 1 AS first_of_user
    FROM per_day
    WHERE points > 0
)
SELECT user_id, points, to_char(expires_on, 'YYYY-MM-DD') AS expires_on, balance, first_of_user
FROM shown
ORDER BY shown.expires_on, user_id;
