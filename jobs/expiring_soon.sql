-- expiring-soon: the points that will expire in (as_of, as_of + notice days], per user and UTC day.

-- name: expiring --
-- Only a user with an earning row dated in the crossing window [as_of - N months, last cutoff) can have
-- points expiring in the window; those users are found through an index of the ledger by date
-- (migration 013's idx_upt_earned_created, or idx_upt_created), and only their ledgers are summed,
-- not every user's (where many users cross, the planner may read the user index whole, in order).
-- Their whole ledgers are summed (E(as_of), D, the balance, the points crossing a cutoff) and
-- their earning rows in the crossing window put on the first bound whose cutoff passes them. Bounds are
-- as_of, each UTC midnight inside the window and the window's end; a bound's cutoff is `t - N months`.
-- Because cutoffs are taken as "the first bound that passes the row", a cutoff that steps back at a
-- month end (Mar 29 - 1 month = Feb 28 00:00, before Mar 28 12:00 - 1 month) never counts a point twice:
-- what expire-points would have expired at an earlier bound stays expired.
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
-- The crossing window [first_cutoff, last_cutoff). Cutoffs never decrease as t grows (UTC month arithmetic
-- clamps the day), so the last is the window end's. crossing_users spells the window out again: joined
-- from here, PostgreSQL 15 read it with a full scan of the user index instead of the index by date.
window_cutoffs AS NOT MATERIALIZED (
    SELECT CAST(:as_of AS timestamptz) - make_interval(months => :months)      AS first_cutoff,
           CAST(:window_end AS timestamptz) - make_interval(months => :months) AS last_cutoff
),
crossing_users AS (
    SELECT DISTINCT t.user_id
    FROM public.user_point_transactions t
    WHERE t.delta > 0
      AND t.created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :months)
      AND t.created_at < CAST(:window_end AS timestamptz) - make_interval(months => :months)
),
ledger_per_user AS (  -- each crossing user's whole ledger (idx_upt_user_created_delta, index-only)
    SELECT t.user_id,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at < w.first_cutoff), 0) AS earned_before,
           coalesce(-sum(t.delta) FILTER (WHERE t.delta < 0), 0)                                  AS debited,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0 AND t.created_at >= w.first_cutoff
                                               AND t.created_at < w.last_cutoff), 0)              AS crossing,
           sum(t.delta)                                                                           AS balance
    FROM public.user_point_transactions t
    CROSS JOIN window_cutoffs w
    WHERE t.user_id IN (SELECT user_id FROM crossing_users)
    GROUP BY t.user_id
),
-- Lots as expire-points counts them (docs/rules.md): a reward's lot less its own clawback, which is no
-- debit. The ledger sums above hold both, so they are corrected by the clawed-back points recorded
-- beside each reward in referral_rewards (its rewarded_at is the reward row's created_at).
own_clawbacks AS (
    SELECT rr.beneficiary_user_id AS user_id,
           sum(rr.clawed_back_points)                                                        AS all_points,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at < w.first_cutoff), 0) AS before_points,
           coalesce(sum(rr.clawed_back_points) FILTER (WHERE rr.rewarded_at >= w.first_cutoff
                                                          AND rr.rewarded_at < w.last_cutoff), 0) AS crossing_points
    FROM public.referral_rewards AS rr
    CROSS JOIN window_cutoffs w
    WHERE rr.clawed_back_points > 0
      AND rr.beneficiary_user_id IN (SELECT user_id FROM crossing_users)
    GROUP BY rr.beneficiary_user_id
),
per_user AS (
    SELECT l.user_id,
           l.earned_before - coalesce(c.before_points, 0) AS earned_before,
           l.debited - coalesce(c.all_points, 0)          AS debited,
           l.crossing - coalesce(c.crossing_points, 0)    AS crossing,
           l.balance
    FROM ledger_per_user AS l
    LEFT JOIN own_clawbacks AS c ON c.user_id = l.user_id
),
candidates AS (
    SELECT * FROM per_user WHERE crossing > 0 AND earned_before + crossing > debited
),
crossing_lots AS (  -- the candidates' earning rows in the crossing window
    SELECT t.user_id, t.delta, t.idempotency_key, t.created_at
    FROM public.user_point_transactions t
    JOIN candidates c ON c.user_id = t.user_id
    CROSS JOIN window_cutoffs w
    WHERE t.delta > 0 AND t.created_at >= w.first_cutoff AND t.created_at < w.last_cutoff
),
crossing_rows AS (  -- each lot less its own clawback, on the first bound whose cutoff passes it
    SELECT l.user_id, l.delta - coalesce(rr.clawed_back_points, 0) AS delta,
           (SELECT min(b.k) FROM bounds b WHERE l.created_at < b.cutoff) AS k
    FROM crossing_lots AS l
    LEFT JOIN public.referral_rewards AS rr
           ON rr.idempotency_key = l.idempotency_key AND rr.clawed_back_points > 0
),
expiring_by AS (  -- X(t_k) at each bound where a row crosses
    SELECT r.user_id, r.k, c.balance,
           greatest(0, c.earned_before + sum(sum(r.delta)) OVER (PARTITION BY r.user_id ORDER BY r.k) - c.debited)
             - greatest(0, c.earned_before - c.debited) AS expired_by
    FROM crossing_rows r
    JOIN candidates c ON c.user_id = r.user_id
    GROUP BY r.user_id, r.k, c.balance, c.earned_before, c.debited
),
per_day AS (  -- X(t_k) - X(t_(k-1)): the points expiring in (t_(k-1), t_k], the UTC day of t_(k-1)
    SELECT user_id, k, balance,
           expired_by - coalesce(lag(expired_by) OVER (PARTITION BY user_id ORDER BY k), 0) AS points
    FROM expiring_by
),
shown AS (
    SELECT d.user_id, d.points, CAST(b.t AS date) AS expires_on, d.balance,
           count(*) OVER (PARTITION BY d.user_id ORDER BY d.k) = 1 AS first_of_user
    FROM per_day d
    JOIN bounds b ON b.k = d.k - 1
    WHERE d.points > 0
)
SELECT user_id, CAST(points AS bigint) AS points, to_char(expires_on, 'YYYY-MM-DD') AS expires_on,
       CAST(balance AS bigint) AS balance, first_of_user
FROM shown
ORDER BY shown.expires_on, user_id;
