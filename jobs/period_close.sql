-- The period close (jobs/period_close.py): months' roll-forwards from the ledger as it is now, the digest of
-- a month's rows, and the closed months (migration 026).

-- name: one_snapshot_per_node --
-- On Citus every connection to a worker takes its own snapshot; with one connection per worker every
-- statement of the close reads each worker's one snapshot (as reconcile's audit does).
SET LOCAL citus.max_adaptive_executor_pool_size = 1;

-- name: lock_month --
-- One close of a month at a time (a session lock, taken before the close's snapshot and held to its
-- end): two sign-offs of a month never stage their files under the same names at once, and the second
-- one's snapshot sees the first one's row. Bounded by lock_timeout like any lock.
SELECT pg_advisory_lock(hashtextextended(:key, 0));

-- name: unlock_month --
SELECT pg_advisory_unlock(hashtextextended(:key, 0));

-- name: transaction_start --
-- The close's instant: the transaction's start, which migration 026's trigger stamps as signed_at.
SELECT now();

-- name: buckets --
-- The ledger dated before :until, by (bucket, type, recovery): `bucket` is width_bucket over :bounds, the
-- months' first instants (UTC, ascending, distinct): 0 before the first, i for [bounds[i], bounds[i+1]).
-- A month starting at bounds[i] is bucket i, its opening every bucket before it. One statement for any
-- number of months (a close reads its month and the one before, a reconcile every month signed).
-- `recovery`: a REFERRAL_CLAWBACK row keyed recover:… (a line of its own, as in reconcile).
SELECT width_bucket(created_at, CAST(:bounds AS timestamptz[]))             AS bucket,
       type,
       (type = 'REFERRAL_CLAWBACK' AND idempotency_key LIKE 'recover:%')     AS recovery,
       count(*)                                                             AS rows,
       coalesce(sum(delta) FILTER (WHERE delta > 0), 0)                     AS issued,
       coalesce(-sum(delta) FILTER (WHERE delta < 0), 0)                    AS debited
FROM public.user_point_transactions
WHERE created_at < CAST(:until AS timestamptz)
GROUP BY 1, 2, 3;

-- name: digest --
-- The month's rows, order-independent: how many, their points, and the sum of a 64-bit hash of each
-- row's id, user, delta, type and instant (as epoch seconds with microseconds, whatever the session's
-- time zone). Sums commute, so every node's partial sums give the same digest.
SELECT count(*)                                                            AS rows,
       coalesce(sum(delta), 0)                                             AS points,
       CAST(coalesce(sum(hashtextextended(
           concat_ws('|', id, user_id, delta, type, extract(epoch FROM created_at)), 0)), 0) AS text) AS hash
FROM public.user_point_transactions
WHERE created_at >= CAST(:from AS timestamptz) AND created_at < CAST(:to AS timestamptz);

-- name: signed_month --
SELECT period, signed_by, signed_at, signed_from, signed_session
FROM public.closed_months
WHERE period = CAST(:period AS date);

-- name: signed_months --
-- Every signed month, its lines as signed (restatements compare them with the ledger now).
SELECT period, signed_by, signed_at, lines
FROM public.closed_months
ORDER BY period;

-- name: stored_document --
-- A signed month's document as its text was written (json keeps it): printed byte for byte.
SELECT CAST(document AS text) AS document
FROM public.closed_months
WHERE period = CAST(:period AS date);

-- name: sign --
INSERT INTO public.closed_months
       (period, opening_points, closing_points, lines, digest_rows, digest_points, digest_hash, document,
        signed_by, signed_at, signed_from)
VALUES (CAST(:period AS date), :opening, :closing, CAST(:lines AS jsonb), :digest_rows, :digest_points,
        :digest_hash, CAST(:document AS json), :signed_by, now(), :signed_from);
