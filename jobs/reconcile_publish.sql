-- reconcile's publication (jobs/reconcile_publish.py): the discrepant users of the run, and, in the
-- transaction that records the run (`insert_run`), with --repair the discrepant cache rows set to the
-- ledger under a row lock.

-- name: insert_discrepancies --
-- One chunk of the stream, as parallel arrays (kinds joined by '|').
INSERT INTO public.reconciliation_discrepancies
       (run_id, user_id, kinds, cached_balance, ledger_balance, drift,
        cached_total_earned, ledger_total_earned, cached_total_spent, ledger_total_spent)
SELECT :run_id, d.user_id, string_to_array(d.kinds, '|'), d.cached_balance, d.ledger_balance, d.drift,
       d.cached_total_earned, d.ledger_total_earned, d.cached_total_spent, d.ledger_total_spent
FROM unnest(CAST(:user_ids AS uuid[]), CAST(:kinds AS text[]), CAST(:cached_balance AS bigint[]),
            CAST(:ledger_balance AS bigint[]), CAST(:drift AS bigint[]),
            CAST(:cached_total_earned AS bigint[]), CAST(:ledger_total_earned AS bigint[]),
            CAST(:cached_total_spent AS bigint[]), CAST(:ledger_total_spent AS bigint[]))
     AS d(user_id, kinds, cached_balance, ledger_balance, drift,
          cached_total_earned, ledger_total_earned, cached_total_spent, ledger_total_spent);

-- name: insert_run --
INSERT INTO public.reconciliation_runs
       (run_id, as_of, users_checked, ledger_rows, discrepancies, ledger_balance, ledger_earned,
        ledger_spent, cache_balance, cache_earned, cache_spent, net_drift, closing_balance, repaired,
        csv_file, json_file, summary)
VALUES (:run_id, :as_of, :users_checked, :ledger_rows, :discrepancies, :ledger_balance, :ledger_earned,
        :ledger_spent, :cache_balance, :cache_earned, :cache_spent, :net_drift, :closing_balance, :repaired,
        :csv_file, :json_file, CAST(:summary AS json));

-- name: repair_batch --
-- The next discrepant users of this run to repair, in user_id order.
SELECT user_id
FROM public.reconciliation_discrepancies
WHERE run_id = :run_id AND user_id > :after
ORDER BY user_id
LIMIT :batch_size;

-- name: create_missing_balances --
-- A MISSING_BALANCE user gets a cache row first, so that every row of the batch can be locked.
INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
SELECT user_id, 0, 0, 0, :as_of
FROM unnest(CAST(:user_ids AS uuid[])) AS batch(user_id)
ORDER BY user_id
ON CONFLICT (user_id) DO NOTHING
RETURNING b.user_id;

-- name: repair_balances --
-- Under the row locks taken by the previous statement, set each cache row to the ledger's sums
-- (read now, so an app write committed while we waited is included); users without ledger rows get 0.
WITH ledger AS (
    SELECT batch.user_id,
           coalesce(sum(t.delta), 0)                          AS balance,
           coalesce(sum(t.delta) FILTER (WHERE t.delta > 0), 0) AS earned,
           coalesce(sum(t.delta) FILTER (WHERE t.delta < 0), 0) AS spent
    FROM unnest(CAST(:user_ids AS uuid[])) AS batch(user_id)
    LEFT JOIN public.user_point_transactions t ON t.user_id = batch.user_id
    GROUP BY batch.user_id
)
UPDATE public.user_point_balances b
   SET balance = l.balance, total_earned = l.earned, total_spent = l.spent, updated_at = :as_of
  FROM ledger l
 WHERE b.user_id = l.user_id
   AND (b.balance, b.total_earned, b.total_spent) IS DISTINCT FROM (l.balance, l.earned, l.spent)
RETURNING b.user_id;
