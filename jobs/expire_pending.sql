-- expire-pending: PENDING relationships created at or before the cutoff (as_of - N days) become EXPIRED.

-- name: count_due --
SELECT count(*)
FROM public.user_referral_relationships
WHERE status = 'PENDING' AND created_at <= :cutoff;

-- name: expire_batch --
-- The next batch by id after :after; the UPDATE re-checks status, so a relationship the app activated
-- meanwhile is left alone. With :dry_run nothing is updated and the batch is what would be.
WITH batch AS (
    SELECT id
    FROM public.user_referral_relationships
    WHERE status = 'PENDING' AND created_at <= :cutoff AND id > :after
    ORDER BY id
    LIMIT :batch_size
),
expired AS (
    UPDATE public.user_referral_relationships r
       SET status = 'EXPIRED', expired_at = :as_of
      FROM batch
     WHERE r.id = batch.id
       AND r.status = 'PENDING'
       AND r.created_at <= :cutoff
       AND NOT :dry_run
    RETURNING r.id
)
SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM batch)                    AS selected,
       (SELECT count(*) FROM expired)                  AS expired;
