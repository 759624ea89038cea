-- expire-points: FIFO expiry. Per user, due = (positive deltas with created_at < cutoff)
-- - (|negative deltas|), over all types, earlier EXPIRY rows included (see expiry_candidates).

-- name: cutoff --
-- PostgreSQL month arithmetic in UTC (the session time zone): Mar 31 - 1 month = Feb 28/29.
SELECT CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int));

-- name: previous_run --
-- The latest successful run that scanned (not a dry run, not disabled): after it every user's due
-- was <= 0, so only points crossing the cutoff since its cutoff can make one positive, unless earning
-- rows dated before that cutoff were written after it (back-fills): their count tells.
SELECT CAST(stats ->> 'cutoff' AS timestamptz)                  AS cutoff,
       CAST(stats ->> 'earned_rows_before_cutoff' AS bigint)     AS earned_rows_before_cutoff
FROM public.job_runs
WHERE job = 'expire-points' AND status = 'SUCCEEDED' AND NOT dry_run
  AND stats ? 'cutoff' AND as_of <= :as_of
ORDER BY as_of DESC, id DESC
LIMIT 1;

-- name: earned_rows_before --
-- Earning rows dated before the previous run's cutoff and before this one (idx_upt_earned_created,
-- index only). The ledger is append-only: the first count differs from the previous run's only when
-- rows dated before its cutoff were written since.
SELECT count(*) FILTER (WHERE created_at < :previous_cutoff) AS before_previous_cutoff,
       count(*) FILTER (WHERE created_at < :cutoff)          AS before_cutoff
FROM public.user_point_transactions
WHERE delta > 0 AND created_at < greatest(:cutoff, coalesce(CAST(:previous_cutoff AS timestamptz), :cutoff));

-- name: count_candidates --
SELECT count(DISTINCT user_id)
FROM public.user_point_transactions
WHERE delta > 0 AND created_at >= coalesce(CAST(:since AS timestamptz), '-infinity') AND created_at < :cutoff;

-- name: candidate_batch --
-- The next users (by user_id, after :after) with points that crossed the cutoff since :since.
SELECT DISTINCT user_id
FROM public.user_point_transactions
WHERE delta > 0 AND created_at >= coalesce(CAST(:since AS timestamptz), '-infinity') AND created_at < :cutoff
  AND user_id > :after
ORDER BY user_id
LIMIT :batch_size;

-- name: first_candidate_batch --
-- The same users as candidate_batch when there is no window (a first run, or after a back-fill):
-- walking user ids in order and probing each one keeps every batch as cheap as the first, whereas a
-- DISTINCT over every earning row before cutoff would be re-read by each batch.
SELECT u.user_id
FROM (SELECT DISTINCT user_id
      FROM public.user_point_transactions
      WHERE user_id > :after
      ORDER BY user_id) AS u
WHERE EXISTS (SELECT 1 FROM public.user_point_transactions t
              WHERE t.user_id = u.user_id AND t.delta > 0 AND t.created_at < :cutoff)
ORDER BY u.user_id
LIMIT :batch_size;

-- name: lock_balances --
-- Lock the batch's cache rows in user_id order BEFORE reading the ledger: a redemption the app
-- commits while we wait is then visible to the next statement (READ COMMITTED) and counted.
SELECT user_id
FROM public.user_point_balances
WHERE user_id = ANY(CAST(:user_ids AS uuid[]))
ORDER BY user_id
FOR UPDATE;

-- name: expiry_candidates --
-- The EXPIRY rows of a batch, for the ledger writer. Every debit of the ledger is counted, also one
-- dated after as_of: it was committed before this expiry (a redemption between the as-of instant and
-- the lock, or a later run's EXPIRY when this run is back-dated), so it already consumed the oldest
-- points. Hence due <= the ledger balance: a balance never goes below zero, nothing expires twice.
SELECT user_id,
       -due                                                                 AS delta,
       'EXPIRY'                                                             AS type,
       CAST(NULL AS uuid)                                                   AS ref_id,
       'expiry:' || CAST(user_id AS text) || ':' || CAST(:as_of_key AS text) AS idempotency_key,
       'points earned before ' || CAST(:cutoff_key AS text) || ' expired (FIFO)' AS note
FROM (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < :cutoff), 0)
         + coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS due
    FROM public.user_point_transactions
    WHERE user_id = ANY(CAST(:user_ids AS uuid[]))
      -- The same users as a range, which the planner estimates well (idx_upt_user_created_delta).
      AND user_id BETWEEN :first_user_id AND :last_user_id
    GROUP BY user_id
) AS per_user
WHERE due > 0
