-- The one ledger writer. `{candidates}` is a job's SELECT of the rows it wants written, with the
-- columns (user_id, delta, type, ref_id, idempotency_key, note). Rows of 0 points are never written.

-- name: write_points --
-- Inserts the candidates whose idempotency key is new, then moves the balance cache by exactly the
-- rows inserted, creating missing balance rows, in user_id order. One statement, one transaction.
WITH candidate AS (
    {candidates}
),
inserted AS (
    INSERT INTO public.user_point_transactions
           (user_id, delta, type, ref_id, note, idempotency_key, created_at)
    SELECT user_id, delta, type, ref_id, note, idempotency_key, :as_of
    FROM candidate
    WHERE delta <> 0
    ORDER BY user_id, idempotency_key
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING user_id, delta, type
),
per_user AS (
    SELECT user_id,
           sum(delta)::int              AS balance,
           sum(greatest(delta, 0))::int AS earned,
           sum(least(delta, 0))::int    AS spent
    FROM inserted
    GROUP BY user_id
),
cache_update AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, balance, earned, spent, :as_of
    FROM per_user
    ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance      = b.balance + excluded.balance,
           total_earned = b.total_earned + excluded.total_earned,
           total_spent  = b.total_spent + excluded.total_spent,
           updated_at   = excluded.updated_at
    RETURNING b.user_id
)
SELECT type, count(*) AS row_count, sum(delta) AS points, (SELECT count(*) FROM cache_update) AS users
FROM inserted
GROUP BY type
ORDER BY type;

-- name: preview_points --
-- What write_points would insert now, for --dry-run: the same candidates less the keys already written.
WITH candidate AS (
    {candidates}
),
fresh AS (
    SELECT c.*
    FROM candidate c
    WHERE c.delta <> 0
      AND NOT EXISTS (SELECT 1 FROM public.user_point_transactions t
                      WHERE t.idempotency_key = c.idempotency_key)
)
SELECT type, count(*) AS row_count, sum(delta) AS points, (SELECT count(DISTINCT user_id) FROM fresh) AS users
FROM fresh
GROUP BY type
ORDER BY type;
