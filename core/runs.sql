-- job_runs: one row per run. Heartbeats and leases use the database clock (clock_timestamp()),
-- which is wall time shared by every replica; business decisions never do.

-- name: abandon_stale_run --
-- Take over a RUNNING run whose heartbeat is older than the lease recorded on its own row.
UPDATE public.job_runs
   SET status = 'ABANDONED',
       finished_at = clock_timestamp(),
       error = format('lease expired: no heartbeat since %s (lease %s s; host %s, pid %s); taken over by %s pid %s',
                      heartbeat_at, lease_seconds, host, pid, CAST(:host AS text), CAST(:pid AS int))
 WHERE job = :job
   AND status = 'RUNNING'
   AND heartbeat_at < clock_timestamp() - make_interval(secs => lease_seconds)
RETURNING id;

-- name: abandon_dead_run --
-- Take over at once a RUNNING run of this host whose process is gone (checked by the caller).
UPDATE public.job_runs
   SET status = 'ABANDONED',
       finished_at = clock_timestamp(),
       error = format('process gone: host %s pid %s no longer runs; taken over by pid %s',
                      host, pid, CAST(:pid AS int))
 WHERE id = :dead_run_id
   AND status = 'RUNNING'
   AND host = :host
   AND pid = :dead_pid
RETURNING id;

-- name: running_on_host --
SELECT id, pid
FROM public.job_runs
WHERE job = :job AND status = 'RUNNING' AND host = :host;

-- name: claim_run --
-- Insert the RUNNING row; the unique indexes turn a second runner (or a taken tick) into no row.
INSERT INTO public.job_runs (job, trigger, as_of, scheduled_for, status, dry_run, settings, host, pid,
                             lease_seconds)
VALUES (:job, :trigger, :as_of, :scheduled_for, 'RUNNING', :dry_run, CAST(:settings AS jsonb), :host, :pid,
        :lease_seconds)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: prove_claim --
-- The claim token of this process's run, for the rest of the transaction (migration 025's job_runs rule).
SELECT set_config('rewards.claim_token', :token, true);

-- name: running_run --
SELECT id, host, pid, started_at, heartbeat_at, trigger, lease_seconds
FROM public.job_runs
WHERE job = :job AND status = 'RUNNING';

-- name: running_runs --
-- Every RUNNING run, and whether its lease (the one on its row) has expired.
SELECT id, job, host, pid, started_at, heartbeat_at, trigger, lease_seconds,
       heartbeat_at < clock_timestamp() - make_interval(secs => lease_seconds) AS lease_expired
FROM public.job_runs
WHERE status = 'RUNNING'
  AND (CAST(:jobs AS text[]) IS NULL OR job = ANY(CAST(:jobs AS text[])))
ORDER BY started_at;

-- name: latest_runs_of --
-- The latest run (not SKIPPED) of each of the given jobs: what a reconcile saw upstream.
SELECT DISTINCT ON (job) job, id, status, as_of, started_at, finished_at
FROM public.job_runs
WHERE job = ANY(CAST(:jobs AS text[])) AND status <> 'SKIPPED' AND NOT dry_run
ORDER BY job, started_at DESC, id DESC;

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

-- name: record_progress --
-- At the end of each batch, in the batch's transaction: the stats that count its rows commit with them.
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

-- name: succeeded_runs --
SELECT id FROM public.job_runs
WHERE id = ANY(CAST(:run_ids AS bigint[])) AND job = :job AND status = 'SUCCEEDED';

-- name: last_run_per_job --
-- The latest run of each job that really ran (a SKIPPED row is a refusal, not a run); dry runs included.
SELECT DISTINCT ON (job) job, id, trigger, as_of, status, dry_run, started_at, finished_at
FROM public.job_runs
WHERE status <> 'SKIPPED'
ORDER BY job, started_at DESC, id DESC;

-- name: last_success_per_job --
SELECT job, max(finished_at) AS finished_at, max(scheduled_for) AS scheduled_for, max(as_of) AS as_of
FROM public.job_runs
WHERE status = 'SUCCEEDED' AND NOT dry_run
GROUP BY job;

-- name: last_invariant_violations --
-- The invariant violations by kind that the latest successful real run reporting them counted (a run's
-- stats key `invariant_violations`: the rules audit), for /metrics.
SELECT stats -> 'invariant_violations' AS by_kind
FROM public.job_runs
WHERE status = 'SUCCEEDED' AND NOT dry_run AND stats ? 'invariant_violations'
ORDER BY finished_at DESC, id DESC
LIMIT 1;
