-- job_runs: one row per run. Heartbeats and leases use the database clock (clock_timestamp()),
-- which is wall time shared by every replica; business decisions never do.

-- name: abandon_stale_run --
-- Take over a RUNNING run whose heartbeat is older than the lease.
UPDATE public.job_runs
   SET status = 'ABANDONED',
       finished_at = clock_timestamp(),
       error = format('lease expired: no heartbeat since %s (host %s, pid %s); taken over by %s pid %s',
                      heartbeat_at, host, pid, CAST(:host AS text), CAST(:pid AS int))
 WHERE job = :job
   AND status = 'RUNNING'
   AND heartbeat_at < clock_timestamp() - make_interval(secs => :lease_seconds)
RETURNING id;

-- name: claim_run --
-- Insert the RUNNING row; the unique indexes turn a second runner (or a taken tick) into no row.
INSERT INTO public.job_runs (job, trigger, as_of, scheduled_for, status, dry_run, settings, host, pid)
VALUES (:job, :trigger, :as_of, :scheduled_for, 'RUNNING', :dry_run, CAST(:settings AS jsonb), :host, :pid)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: running_run --
SELECT id, host, pid, started_at, heartbeat_at, trigger
FROM public.job_runs
WHERE job = :job AND status = 'RUNNING';

-- name: tick_taken --
SELECT EXISTS (SELECT 1 FROM public.job_runs
               WHERE job = :job AND scheduled_for = :scheduled_for AND status IN ('RUNNING', 'SUCCEEDED'));

-- name: record_skipped --
INSERT INTO public.job_runs (job, trigger, as_of, scheduled_for, status, dry_run, settings,
                             finished_at, error, host, pid)
VALUES (:job, :trigger, :as_of, :scheduled_for, 'SKIPPED', :dry_run, CAST(:settings AS jsonb),
        clock_timestamp(), :error, :host, :pid)
RETURNING id;

-- name: heartbeat --
-- Also the fence of every batch: a run that lost its lease finds no row and rolls its batch back.
UPDATE public.job_runs
   SET heartbeat_at = clock_timestamp(), stats = CAST(:stats AS jsonb)
 WHERE id = :run_id AND status = 'RUNNING'
RETURNING id;

-- name: finish_run --
UPDATE public.job_runs
   SET status = :status, finished_at = clock_timestamp(), heartbeat_at = clock_timestamp(),
       stats = CAST(:stats AS jsonb), error = :error
 WHERE id = :run_id AND status = 'RUNNING'
RETURNING id;

-- name: last_run_per_job --
SELECT DISTINCT ON (job) job, id, trigger, as_of, status, started_at, finished_at
FROM public.job_runs
WHERE status <> 'SKIPPED'
ORDER BY job, started_at DESC, id DESC;

-- name: last_success_per_job --
SELECT job, max(finished_at) AS finished_at, max(scheduled_for) AS scheduled_for, max(as_of) AS as_of
FROM public.job_runs
WHERE status = 'SUCCEEDED' AND NOT dry_run
GROUP BY job;

-- name: recent_runs --
SELECT id, job, trigger, as_of, scheduled_for, status, dry_run, started_at, finished_at,
       finished_at - started_at AS duration, stats, error, host, pid
FROM public.job_runs
WHERE (CAST(:job AS text) IS NULL OR job = CAST(:job AS text))
ORDER BY started_at DESC, id DESC
LIMIT :limit;
