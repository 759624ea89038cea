-- expire-points: FIFO expiry. Per user, due = (positive deltas with created_at < cutoff)
-- - (|negative deltas|), over all types, earlier EXPIRY rows included (see expiry_candidates).

-- name: cutoff --
-- PostgreSQL month arithmetic in UTC (the session time zone): Mar 31 - 1 month = Feb 28/29.
SELECT CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int));

-- name: count_users --
-- For the progress display: users with ledger rows (index only).
SELECT count(DISTINCT user_id) FROM public.user_point_transactions;

-- name: candidate_batch --
-- The next users (by user_id, after :after) with points earned before cutoff: walking user ids in
-- order and probing each one keeps every batch as cheap as the first, whereas a DISTINCT over every
-- earning row before cutoff would be re-read by each batch.
SELECT u.user_id
FROM (SELECT DISTINCT user_id
      FROM public.user_point_transactions
      WHERE user_id > :after
      ORDER BY user_id) AS u
WHERE EXISTS (SELECT 1 FROM public.user_point_transactions t
              WHERE t.user_id = u.user_id AND t.delta > 0 AND t.created_at < :cutoff)
ORDER BY u.user_id
LIMIT :batch_size;

-- name: expiry_candidates --
-- The EXPIRY rows of a batch, for the ledger writer. Every debit of the ledger is counted, also one
-- dated after as_of: it was committed before this expiry (a redemption between the as-of instant and
-- the lock, or a later run's EXPIRY when this run is back-dated), so it already consumed the oldest
-- points. Hence due <= the ledger balance: a balance never goes below zero, nothing expires twice.
-- The key is expiry:{user}:{as_of}, or with :{n} (n = 2, 3, …) when rows of that as-of exist already.
SELECT per_user.user_id,
       -per_user.due                                                        AS delta,
       'EXPIRY'                                                             AS type,
       CAST(NULL AS uuid)                                                   AS ref_id,
       CASE WHEN earlier.rows = 0 THEN per_user.key ELSE per_user.key || ':' || (earlier.rows + 1) END
                                                                            AS idempotency_key,
       'points earned before ' || CAST(:cutoff_key AS text) || ' expired (FIFO)' AS note
FROM (
    SELECT user_id,
           'expiry:' || CAST(user_id AS text) || ':' || CAST(:as_of_key AS text) AS key,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < :cutoff), 0)
         + coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS due
    FROM public.user_point_transactions
    WHERE user_id = ANY(CAST(:user_ids AS uuid[]))
      -- The same users as a range, which the planner estimates well (idx_upt_user_created_delta).
      AND user_id BETWEEN :first_user_id AND :last_user_id
    GROUP BY user_id
) AS per_user
CROSS JOIN LATERAL (
    SELECT count(*) AS rows
    FROM public.user_point_transactions AS t
    WHERE t.user_id = per_user.user_id AND t.type = 'EXPIRY'
      AND (t.idempotency_key = per_user.key OR starts_with(t.idempotency_key, per_user.key || ':'))
) AS earlier
WHERE per_user.due > 0
