-- expire-points: FIFO expiry of lots (docs/rules.md). Per user,
-- due = (lots with created_at < cutoff, a reward's lot less its own clawback) - (|other debits|),
-- earlier EXPIRY rows and recoveries included (see expiry_candidates). A reward's own clawback
-- (`clawback:{reward key}`) cancels points of that reward, never the user's oldest points: it is
-- left out of the debits, and reduces its reward's lot when that lot is before the cutoff. As both
-- are in the ledger sums already, the sums are corrected by the clawed-back points of rewards dated
-- at or after the cutoff (from referral_rewards, where each clawback is recorded beside its reward;
-- its `rewarded_at` is the reward row's created_at).

-- name: cutoff --
-- PostgreSQL month arithmetic in UTC (the session time zone): Mar 31 - 1 month = Feb 28/29.
SELECT CAST(:as_of AS timestamptz) - make_interval(months => CAST(:months AS int));

-- name: plan_run --
-- One pass over the whole ledger into the session's expiry_plan: every user with points earned before
-- the cutoff is checked; those with something due (due > 0 implies such points) are kept, numbered in
-- batches in user_id order, and one row without a user counts the users checked (so a run with nothing
-- due still says how many it checked; every other statement reads the plan by batch, which that row has
-- not). The due is read again per batch under the balance lock (a debit committed meanwhile can only
-- lower it, never raise it). A CREATE TABLE AS, not an INSERT, so that the pass runs with parallel workers.
-- debited_at_as_of: the user has a debit dated exactly as_of, as every EXPIRY row of this as-of is
-- (only runs of the same as-of write those, one at a time), so only such users can need a key with :{n}.
CREATE TEMP TABLE expiry_plan AS
WITH checked AS (
    SELECT ledger.user_id, ledger.debited_at_as_of,
           ledger.due + coalesce(young_clawbacks.points, 0) AS due
    FROM (
        SELECT user_id,
               bool_or(delta < 0 AND created_at = :as_of) AS debited_at_as_of,
               coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < :cutoff), 0)
             + coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS due
        FROM public.user_point_transactions
        GROUP BY user_id
        HAVING bool_or(delta > 0 AND created_at < :cutoff)
    ) AS ledger
    LEFT JOIN (
        SELECT beneficiary_user_id AS user_id, sum(clawed_back_points) AS points
        FROM public.referral_rewards
        WHERE clawback_key IS NOT NULL AND clawed_back_points > 0 AND rewarded_at >= :cutoff
        GROUP BY beneficiary_user_id
    ) AS young_clawbacks ON young_clawbacks.user_id = ledger.user_id
)
SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1) / :batch_size AS batch, debited_at_as_of,
       CAST(NULL AS bigint) AS users_checked
FROM checked
WHERE due > 0
UNION ALL
SELECT NULL, NULL, NULL, count(*) FROM checked;

-- name: index_plan --
CREATE INDEX ON pg_temp.expiry_plan (batch);

-- name: plan_size --
SELECT max(users_checked) AS users_checked, count(user_id) AS users_due, coalesce(max(batch) + 1, 0) AS batches
FROM pg_temp.expiry_plan;

-- name: batch_users --
SELECT user_id, debited_at_as_of FROM pg_temp.expiry_plan WHERE batch = :batch ORDER BY user_id;

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
       CASE WHEN earlier.rows IS NULL THEN per_user.key ELSE per_user.key || ':' || (earlier.rows + 1) END
                                                                            AS idempotency_key,
       'points earned before ' || CAST(:cutoff_key AS text) || ' expired (FIFO)' AS note
FROM (
    SELECT ledger.user_id, ledger.key, ledger.due + coalesce(young_clawbacks.points, 0) AS due
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
    ) AS ledger
    LEFT JOIN (
        -- The batch's range only: the join keeps the batch's users, and the array, planned once more
        -- element by element (again on each shard on Citus), cost more than the few rows it left out.
        SELECT beneficiary_user_id AS user_id, sum(clawed_back_points) AS points
        FROM public.referral_rewards
        WHERE beneficiary_user_id BETWEEN :first_user_id AND :last_user_id
          AND clawback_key IS NOT NULL AND clawed_back_points > 0 AND rewarded_at >= :cutoff
        GROUP BY beneficiary_user_id
    ) AS young_clawbacks ON young_clawbacks.user_id = ledger.user_id
) AS per_user
LEFT JOIN (
    -- Rows of this as-of's keys already written, looked up by user for the batch's users the plan
    -- found debited at as_of (usually none). Not by date: every row a job writes is dated its as-of,
    -- so this run's earlier batches (and, under run-all, the reward jobs' rows) pile up at as_of in
    -- idx_upt_created, which the planner, its statistics older than they, took for one row: at 600k
    -- users batch 21 filtered 105,000 rows there, and each batch more than the one before.
    SELECT t.user_id, count(*) AS rows
    FROM unnest(CAST(:debited_at_as_of AS uuid[])) AS debited(user_id)
    JOIN public.user_point_transactions AS t ON t.user_id = debited.user_id
    WHERE t.type = 'EXPIRY'
      AND (t.idempotency_key = 'expiry:' || CAST(t.user_id AS text) || ':' || CAST(:as_of_key AS text)
           OR starts_with(t.idempotency_key, 'expiry:' || CAST(t.user_id AS text) || ':' || CAST(:as_of_key AS text) || ':'))
    GROUP BY t.user_id
) AS earlier ON earlier.user_id = per_user.user_id
WHERE per_user.due > 0
