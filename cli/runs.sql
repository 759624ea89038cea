-- What the command line reads from job_runs (jobs, history, show). Read-only.

-- name: latest_success_per_job --
-- The latest real (not dry) success of each job: the one an alert watches.
SELECT DISTINCT ON (job) job, id, trigger, as_of, finished_at
FROM public.job_runs
WHERE status = 'SUCCEEDED' AND NOT dry_run
ORDER BY job, finished_at DESC, id DESC;

-- name: history --
SELECT id, job, trigger, as_of, scheduled_for, status, dry_run, started_at, finished_at,
       finished_at - started_at AS duration, stats, error, host, pid
FROM public.job_runs
WHERE (CAST(:job AS text) IS NULL OR job = CAST(:job AS text))
  AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))
  AND (CAST(:since AS timestamptz) IS NULL OR started_at >= CAST(:since AS timestamptz))
ORDER BY started_at DESC, id DESC
LIMIT :limit;

-- name: one_run --
SELECT id, job, trigger, as_of, scheduled_for, status, dry_run, started_at, heartbeat_at, finished_at,
       finished_at - started_at AS duration, settings, stats, error, host, pid
FROM public.job_runs
WHERE id = :run_id;
