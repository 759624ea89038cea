-- The finance report of a reconcile run: what it shows beside the run's stored summary.

-- name: largest_discrepancies --
-- The largest discrepancies by |drift| (ties by user id), for the report's table.
SELECT user_id, kinds, cached_balance, ledger_balance, drift,
       cached_total_earned, ledger_total_earned, cached_total_spent, ledger_total_spent
FROM public.reconciliation_discrepancies
WHERE run_id = :run_id
ORDER BY abs(drift) DESC, user_id
LIMIT :limit;

-- name: all_discrepancies --
SELECT user_id, kinds, cached_balance, ledger_balance, drift,
       cached_total_earned, ledger_total_earned, cached_total_spent, ledger_total_spent
FROM public.reconciliation_discrepancies
WHERE run_id = :run_id
ORDER BY user_id;

-- name: earlier_reconciles --
-- Successful real reconciles before this one (by as-of): those of the charted 12 months and the
-- last :recent ones, whichever reaches further back.
WITH earlier AS (
    SELECT r.run_id, r.as_of, r.closing_balance, r.net_drift, r.discrepancies
    FROM public.reconciliation_runs r
    JOIN public.job_runs j ON j.id = r.run_id
    WHERE j.status = 'SUCCEEDED' AND NOT j.dry_run AND r.run_id <> :run_id
      AND (r.as_of, r.run_id) < (CAST(:as_of AS timestamptz), :run_id)
),
recent AS (
    SELECT run_id FROM earlier ORDER BY as_of DESC, run_id DESC LIMIT :recent
)
SELECT *
FROM earlier
WHERE as_of > CAST(:as_of AS timestamptz) - make_interval(months => :months)
   OR run_id IN (SELECT run_id FROM recent)
ORDER BY as_of, run_id;

-- name: findings_shown --
-- The rules audit's findings of the run (migration 024), the first :limit for the report's section.
SELECT kind, user_id, referred_user_id, level, month, reward_key, points, detail
FROM public.reconciliation_findings
WHERE run_id = :run_id
ORDER BY number
LIMIT :limit;

-- name: all_findings --
SELECT kind, user_id, referred_user_id, level, month, reward_key, points, detail
FROM public.reconciliation_findings
WHERE run_id = :run_id
ORDER BY number;

-- name: stored_summary --
-- The stored summary of an earlier reconcile: the previous period shown beside this one.
SELECT run_id, as_of, summary
FROM public.reconciliation_runs
WHERE run_id = :run_id;
