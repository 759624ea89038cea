-- A stored reconciliation report, read back for `python scheduler.py report`.

-- name: report_run --
-- A stored report: the given run, or the latest one when :run_id is NULL.
SELECT r.*, j.status
FROM public.reconciliation_runs r
JOIN public.job_runs j ON j.id = r.run_id
WHERE CAST(:run_id AS bigint) IS NULL OR r.run_id = CAST(:run_id AS bigint)
ORDER BY r.run_id DESC
LIMIT 1;

-- name: job_run --
SELECT id, job, status, dry_run, error FROM public.job_runs WHERE id = :run_id;
