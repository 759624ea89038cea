-- reconcile's audit: the balance cache against the ledger, every read in one REPEATABLE READ READ ONLY
-- snapshot (jobs/reconcile_audit.py). What is written of it is reconcile_publish.sql's.

-- name: one_snapshot_per_node --
-- On Citus every connection to a worker takes its own snapshot; with one connection per worker, every
-- statement of the reconcile reads each worker's one snapshot (a user's ledger and cache rows share a
-- shard, hence a snapshot). On plain PostgreSQL a `citus.` setting is an inert placeholder.
SET LOCAL citus.max_adaptive_executor_pool_size = 1;

-- name: previous_reconcile --
-- The opening of the roll-forward: the latest successful reconcile for an earlier as-of.
-- closing_rows: the rows that closing counted (summaries written before it was kept: all rows of that
-- snapshot less those dated after its as-of).
-- monthly: its chart's lines (rows dated up to its as-of), which this run carries on when the rows dated
-- up to that as-of are still the ones it counted.
SELECT r.run_id, r.as_of, r.closing_balance,
       coalesce(CAST(r.summary -> 'roll_forward' ->> 'closing_rows' AS bigint),
                r.ledger_rows - CAST(r.summary -> 'after_as_of' ->> 'rows' AS bigint)) AS closing_rows,
       r.summary -> 'monthly' AS monthly,
       r.summary -> 'seen' -> 'ledger_by_type' AS ledger_by_type,
       r.summary -> 'seen' -> 'clawbacks' AS clawbacks
FROM public.reconciliation_runs r
JOIN public.job_runs j ON j.id = r.run_id
WHERE j.status = 'SUCCEEDED' AND NOT j.dry_run AND r.as_of < :as_of AND r.run_id <> :run_id
ORDER BY r.as_of DESC, r.run_id DESC
LIMIT 1;

-- name: months_charted_from --
-- The first instant of the 12 calendar months charted (the as-of's month and the 11 before).
SELECT date_trunc('month', CAST(:as_of AS timestamptz)) - make_interval(months => :months - 1);

-- name: cache_totals --
-- The cache's totals; with the discrepant users' drift they give the ledger's (see reconcile.py).
SELECT count(*)                        AS rows,
       coalesce(sum(balance), 0)       AS balance,
       coalesce(sum(total_earned), 0)  AS earned,
       coalesce(sum(total_spent), 0)   AS spent
FROM public.user_point_balances;

-- name: rows_up_to --
-- The ledger rows dated up to an instant (an index-only scan of idx_upt_created).
SELECT count(*) FROM public.user_point_transactions WHERE created_at <= :up_to;

-- name: movements --
-- The ledger rows dated in [:from, :up_to] and after :after (each bound optional), in a few hundred lines
-- by (type, recovery, charted month, in the period, after the as-of): the roll-forward's and the monthly
-- chart's movements, the closing and the late-committed split. `recovery`: a REFERRAL_CLAWBACK row keyed
-- recover:… (a line of its own); a boolean, so the planner still counts few groups. The rows are summed by UTC day first (migration
-- 021's statistics let each parallel worker, or each shard, hash those few thousand groups), then the
-- days by month: `month` is a bucket of :month_starts (the 12 charted months' first instants and the
-- next month's, all UTC midnights): 0 before them, 1..12 a charted month.
-- A bound left out (NULL) is written `bound IS NULL OR …`, which the planner folds away: a first
-- reconcile then compares nothing per row (at 2M users 2.7 s against 3.3 s with comparisons to ±infinity).
SELECT type, recovery, width_bucket(day, CAST(:month_starts AS timestamptz[])) AS month, in_period, after_as_of,
       sum(rows) AS rows, sum(balance) AS balance, sum(earned) AS earned, sum(spent) AS spent
FROM (
    SELECT type,
           (type = 'REFERRAL_CLAWBACK' AND idempotency_key LIKE 'recover:%')       AS recovery,
           date_bin(CAST('1 day' AS interval), created_at, CAST('2000-01-01 00:00:00+00' AS timestamptz)) AS day,
           (CAST(:previous_as_of AS timestamptz) IS NULL OR created_at > :previous_as_of) AS in_period,
           created_at > CAST(:as_of AS timestamptz)                                 AS after_as_of,
           count(*)                                                                 AS rows,
           sum(delta)                                                               AS balance,
           coalesce(sum(delta) FILTER (WHERE delta > 0), 0)                         AS earned,
           coalesce(sum(delta) FILTER (WHERE delta < 0), 0)                         AS spent
    FROM public.user_point_transactions
    WHERE (CAST(:from AS timestamptz) IS NULL OR created_at >= :from)
      AND (CAST(:after AS timestamptz) IS NULL OR created_at > :after)
      AND (CAST(:up_to AS timestamptz) IS NULL OR created_at <= :up_to)
    GROUP BY 1, 2, 3, 4, 5
) AS by_day
GROUP BY 1, 2, 3, 4, 5;

-- name: group_users_in_index_order --
-- For `discrepancies` alone: group the ledger by user in index order (idx_upt_user_created_delta,
-- index-only), not by hashing. Each parallel worker then reads its own range of users, so its partial
-- groups are its own; hashed, every worker held nearly every user and the leader merged them all again
-- (2M users: 12-15 s against 5.4-8 s; 200k: 1.2 s against 0.6-0.9 s). The full join still hashes
-- (AUDIT_WORK_MEM holds the cache's side).
SET LOCAL enable_hashagg = off;

-- name: hash_groups_again --
-- After `discrepancies`: `movements` hashes its few thousand (type, day) groups in each worker.
SET LOCAL enable_hashagg TO DEFAULT;

-- name: discrepancies --
-- Every user's ledger sums against the cache row (a full join, so cache rows without ledger rows are
-- seen too), in ONE pass over the ledger grouped by user_id: the discrepant users, in user_id order
-- (streamed by COPY, so kinds come joined by '|'; NULLs are skipped). Field mismatches are judged
-- when both sides exist; a user with no cache row is MISSING_BALANCE, a nonzero cache row without ledger rows ORPHAN_BALANCE. Grouped by the distribution
-- column and joined on it, the statement runs shard by shard on Citus.
WITH ledger AS (
    SELECT user_id,
           sum(delta)                                       AS balance,
           coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS earned,
           coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS spent
    FROM public.user_point_transactions
    GROUP BY user_id
),
compared AS (
    SELECT coalesce(l.user_id, b.user_id)     AS user_id,
           l.user_id IS NOT NULL              AS in_ledger,
           b.user_id IS NOT NULL              AS in_cache,
           CAST(b.balance AS bigint)          AS cached_balance,
           coalesce(l.balance, 0)             AS ledger_balance,
           CAST(b.total_earned AS bigint)     AS cached_total_earned,
           coalesce(l.earned, 0)              AS ledger_total_earned,
           CAST(b.total_spent AS bigint)      AS cached_total_spent,
           coalesce(l.spent, 0)               AS ledger_total_spent
    FROM ledger l
    FULL JOIN public.user_point_balances b ON b.user_id = l.user_id
)
-- The WHERE is "some kind applies", said in one comparison so that only the few discrepant users get
-- their kinds spelled out (a fifth of the pass at 200k users when every user's array was built).
SELECT user_id,
       array_to_string(ARRAY[
           CASE WHEN in_ledger AND NOT in_cache THEN 'MISSING_BALANCE' END,
           CASE WHEN in_cache AND NOT in_ledger
                 AND (cached_balance <> 0 OR cached_total_earned <> 0 OR cached_total_spent <> 0)
                THEN 'ORPHAN_BALANCE' END,
           CASE WHEN in_ledger AND in_cache AND cached_balance <> ledger_balance THEN 'BALANCE_MISMATCH' END,
           CASE WHEN in_ledger AND in_cache AND cached_total_earned <> ledger_total_earned
                THEN 'EARNED_MISMATCH' END,
           CASE WHEN in_ledger AND in_cache AND cached_total_spent <> ledger_total_spent THEN 'SPENT_MISMATCH' END,
           CASE WHEN in_cache AND cached_balance <> cached_total_earned + cached_total_spent
                THEN 'CACHE_INCONSISTENT' END,
           CASE WHEN ledger_balance < 0 THEN 'NEGATIVE_BALANCE' END
       ], '|') AS kinds,
       cached_balance, ledger_balance, coalesce(cached_balance, 0) - ledger_balance AS drift,
       cached_total_earned, ledger_total_earned, cached_total_spent, ledger_total_spent
FROM compared
WHERE (cached_balance, cached_total_earned, cached_total_spent)
          IS DISTINCT FROM (ledger_balance, ledger_total_earned, ledger_total_spent)  -- missing, orphan, mismatch
   OR cached_balance <> cached_total_earned + cached_total_spent
   OR ledger_balance < 0
ORDER BY user_id;

-- name: unrecovered_clawbacks --
-- The clawed-back rewards' totals in this snapshot, dated (clawed_back_at) at or before the as-of, and
-- (`…_before`) at or before the previous as-of: the run stores the first, and the next run's figures
-- are its own less them (exactly once; reconcile_summary.py). Clawbacks are few among the rewards: read
-- through the partial index on clawed_back_at.
SELECT count(*)                                                                 AS clawbacks,
       coalesce(sum(clawed_back_points), 0)                                     AS clawed_back_points,
       coalesce(sum(expired_points), 0)                                         AS expired_points,
       count(*) FILTER (WHERE unrecovered_points > 0)                           AS rewards_unrecovered,
       coalesce(sum(unrecovered_points), 0)                                     AS unrecovered_points,
       coalesce(sum(recovered_points), 0)                                       AS recovered_points,
       count(*) FILTER (WHERE clawed_back_at <= :previous_as_of)                AS clawbacks_before,
       coalesce(sum(clawed_back_points) FILTER (WHERE clawed_back_at <= :previous_as_of), 0)
                                                                                AS clawed_back_points_before,
       coalesce(sum(expired_points) FILTER (WHERE clawed_back_at <= :previous_as_of), 0) AS expired_points_before,
       count(*) FILTER (WHERE unrecovered_points > 0 AND clawed_back_at <= :previous_as_of)
                                                                                AS rewards_unrecovered_before,
       coalesce(sum(unrecovered_points) FILTER (WHERE clawed_back_at <= :previous_as_of), 0)
                                                                                AS unrecovered_points_before,
       coalesce(sum(recovered_points) FILTER (WHERE clawed_back_at <= :previous_as_of), 0)
                                                                                AS recovered_points_before
FROM public.referral_rewards
WHERE clawback_key IS NOT NULL  -- implied by clawed_back_at, but said so the partial index is used
  AND clawed_back_at <= :as_of;
