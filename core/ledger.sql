-- The one ledger writer. `{candidates}` is a job's SELECT of the rows it wants written, with the
-- columns (user_id, delta, type, ref_id, idempotency_key, note); delta may be any integer or numeric.
-- `{created_at}` is `:as_of` for a job's rows; the app's rows the sample data seeds carry their own
-- `created_at` column and no idempotency key (see core/ledger.py).

-- name: write_points --
-- Inserts the candidates whose idempotency key is new, then moves the balance cache by exactly the
-- rows inserted, creating missing balance rows, in user_id order. One statement, one transaction.
-- A row that cannot be stored is *unstorable* and left out, never failing the statement: its delta
-- is outside the ledger's INT, or (with the user's earlier new rows, in key order) it would carry a
-- cache field past INT. Rows of 0 points are never written.
WITH candidate AS (
    {candidates}
),
fresh AS (
    SELECT c.*
    FROM candidate AS c
    WHERE c.delta <> 0
      -- An uncorrelated set (Citus plans it apart; a correlated NOT EXISTS it cannot run here).
      AND (c.idempotency_key IS NULL  -- the app's rows: no key, nothing to conflict with
           OR c.idempotency_key NOT IN (SELECT t.idempotency_key
                                       FROM public.user_point_transactions AS t
                                       WHERE t.idempotency_key IN (SELECT idempotency_key FROM candidate)))
),
numbered AS (
    -- A key repeated within the call is written once (its first copy; ON CONFLICT drops the others), so
    -- only that copy counts in the INT guard, as in the staged writer below.
    SELECT f.*, f.delta BETWEEN -2147483648 AND 2147483647 AS fits,
           f.idempotency_key IS NOT NULL
             AND row_number() OVER (PARTITION BY f.user_id, f.idempotency_key) > 1 AS repeated
    FROM fresh AS f
),
cache_after AS (
    SELECT f.*,
           coalesce(b.balance, 0)      + sum(f.delta)              OVER per_user AS balance_after,
           coalesce(b.total_earned, 0) + sum(greatest(f.delta, 0)) OVER per_user AS earned_after,
           coalesce(b.total_spent, 0)  + sum(least(f.delta, 0))    OVER per_user AS spent_after
    FROM numbered AS f
    -- Only the candidates' users (Citus would otherwise ship every balance row to the coordinator), as
    -- one array: PostgreSQL, underestimating the CTE, probed an `IN (SELECT …)` once per balance row.
    LEFT JOIN (SELECT user_id, balance, total_earned, total_spent
               FROM public.user_point_balances
               WHERE user_id = ANY(ARRAY(SELECT user_id FROM numbered))) AS b ON b.user_id = f.user_id
    WHERE f.fits AND NOT f.repeated
    WINDOW per_user AS (PARTITION BY f.user_id ORDER BY f.idempotency_key)
),
guarded AS (
    SELECT *,
           balance_after BETWEEN -2147483648 AND 2147483647
             AND earned_after <= 2147483647
             AND spent_after >= -2147483648 AS stores
    FROM cache_after
),
storable AS (
    SELECT * FROM guarded WHERE stores
),
unstorable AS (
    -- Read off each row's own flags, never by matching keys: an anti-join of two steps, both estimated
    -- at one row when a job's candidates were, ran as a nested loop of 5,000 × 2,500 rows (2.5 s a
    -- batch). A keyless row has no key to report by (the sample's app rows never come near INT's limits).
    SELECT type, idempotency_key, delta FROM numbered WHERE NOT fits AND NOT repeated AND idempotency_key IS NOT NULL
    UNION ALL
    SELECT type, idempotency_key, delta FROM guarded WHERE NOT stores AND idempotency_key IS NOT NULL
),
inserted AS (
    INSERT INTO public.user_point_transactions
           (user_id, delta, type, ref_id, note, idempotency_key, created_at)
    SELECT user_id, CAST(delta AS int), type, ref_id, note, idempotency_key, {created_at}
    FROM storable
    ORDER BY user_id, idempotency_key
    -- No conflict target: the key's unique index is (idempotency_key) on PostgreSQL and
    -- (user_id, idempotency_key) on Citus, whose unique indexes include the distribution column.
    ON CONFLICT DO NOTHING
    RETURNING user_id, delta, type
),
per_user AS (
    SELECT user_id,
           CAST(sum(delta) AS int)              AS balance,
           CAST(sum(greatest(delta, 0)) AS int) AS earned,
           CAST(sum(least(delta, 0)) AS int)    AS spent
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
SELECT 'written' AS outcome, type, count(*) AS row_count, sum(delta) AS points,
       CAST(NULL AS text[]) AS keys, (SELECT count(*) FROM cache_update) AS users
FROM inserted
GROUP BY type
UNION ALL
SELECT 'unstorable', type, count(*), sum(delta), array_agg(idempotency_key ORDER BY idempotency_key), NULL
FROM unstorable
GROUP BY type;

-- name: stage_points --
-- The same writer on Citus, where data-modifying CTEs run step by step through the coordinator: the
-- candidates are staged in public.rewards_ledger_staging (migration 028), distributed by user_id beside
-- the ledger and the cache, and each step below is one statement every shard runs on its own rows. The
-- steps keep the one statement's rules: a key written before (for anyone) is not written again, a row that
-- cannot be stored is left out and reported, the cache moves by exactly the rows inserted (core/ledger.py
-- checks that every staged row was). The batch deletes its staged rows before it commits.
INSERT INTO public.rewards_ledger_staging (user_id, delta, type, ref_id, idempotency_key, note, created_at)
SELECT c.user_id, c.delta, c.type, c.ref_id, c.idempotency_key, c.note, {created_at}
FROM ({candidates}) AS c
WHERE c.delta <> 0;

-- name: unstage_known_keys --
-- A key is looked up across every shard: unique per (user_id, key) on Citus, it must be new for anyone.
DELETE FROM public.rewards_ledger_staging
WHERE idempotency_key IN (SELECT t.idempotency_key
                          FROM public.user_point_transactions AS t
                          WHERE t.idempotency_key IN (SELECT idempotency_key FROM public.rewards_ledger_staging));

-- name: unstage_unstorable --
-- A key staged twice for a user is written once (its first staging), as the one statement's ON CONFLICT
-- does; then its INT guard, per user in key order over the rows whose delta fits the ledger's INT.
-- Returns the rows left out, a repeated key's copies marked as such (they are not unstorable).
DELETE FROM public.rewards_ledger_staging AS s
USING (
    SELECT numbered.user_id, numbered.n, numbered.copy > 1 AS repeated,
           numbered.delta BETWEEN -2147483648 AND 2147483647 AS fits,
           coalesce(b.balance, 0)
             + sum(numbered.delta) FILTER (WHERE numbered.copy = 1 AND numbered.delta BETWEEN -2147483648 AND 2147483647)
                   OVER per_user AS balance_after,
           coalesce(b.total_earned, 0)
             + sum(greatest(numbered.delta, 0)) FILTER (WHERE numbered.copy = 1 AND numbered.delta <= 2147483647)
                   OVER per_user AS earned_after,
           coalesce(b.total_spent, 0)
             + sum(least(numbered.delta, 0)) FILTER (WHERE numbered.copy = 1 AND numbered.delta >= -2147483648)
                   OVER per_user AS spent_after
    FROM (
        SELECT f.*, CASE WHEN f.idempotency_key IS NULL THEN 1
                         ELSE row_number() OVER (PARTITION BY f.user_id, f.idempotency_key ORDER BY f.n) END AS copy
        FROM public.rewards_ledger_staging AS f
    ) AS numbered
    -- Each user's own cache row, probed by key (OFFSET 0 keeps the probe: as a join, or with the
    -- subquery pulled up into one, it was planned as a hash of the shard's whole cache, every batch).
    LEFT JOIN LATERAL (SELECT c.balance, c.total_earned, c.total_spent
                       FROM public.user_point_balances AS c
                       WHERE c.user_id = numbered.user_id
                       OFFSET 0) AS b ON TRUE
    WINDOW per_user AS (PARTITION BY numbered.user_id ORDER BY numbered.idempotency_key)
) AS guarded
WHERE guarded.user_id = s.user_id AND guarded.n = s.n
  AND (guarded.repeated
       OR NOT (guarded.fits
               AND guarded.balance_after BETWEEN -2147483648 AND 2147483647
               AND guarded.earned_after <= 2147483647
               AND guarded.spent_after >= -2147483648))
RETURNING s.type, s.idempotency_key, guarded.repeated;

-- name: insert_staged --
INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, note, idempotency_key, created_at)
SELECT user_id, CAST(delta AS int), type, ref_id, note, idempotency_key, created_at
FROM public.rewards_ledger_staging
-- No ORDER BY: Citus would pull the rows through the coordinator for it (the cache below may: by user_id).
ON CONFLICT DO NOTHING;

-- name: move_cache_by_staged --
INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
SELECT user_id, CAST(sum(delta) AS int), CAST(sum(greatest(delta, 0)) AS int), CAST(sum(least(delta, 0)) AS int), :as_of
FROM public.rewards_ledger_staging
GROUP BY user_id
ORDER BY user_id
ON CONFLICT (user_id) DO UPDATE
   SET balance      = b.balance + excluded.balance,
       total_earned = b.total_earned + excluded.total_earned,
       total_spent  = b.total_spent + excluded.total_spent,
       updated_at   = excluded.updated_at;

-- name: staged_by_type --
SELECT type, count(*) AS row_count, sum(delta) AS points FROM public.rewards_ledger_staging GROUP BY type;

-- name: clear_staged --
DELETE FROM public.rewards_ledger_staging;

-- name: stages_writes --
SELECT to_regclass('public.rewards_ledger_staging') IS NOT NULL;

-- name: lock_balances --
-- Lock the given users' cache rows in user_id order BEFORE reading their ledger: a debit the app
-- commits while we wait is then visible to the next statement (READ COMMITTED) and counted. Every
-- locker takes the rows in the same (user_id) order, so two jobs never deadlock. Migration 020's
-- function, the same statement on PostgreSQL and on Citus (where it locks one row at a time).
SELECT public.rewards_lock_balances(CAST(:user_ids AS uuid[]));
