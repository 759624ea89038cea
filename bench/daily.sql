-- The daily scenario's changes beyond the app's own day (cli/sample_data.advance): what billing and
-- the app do to history in one day, each dated in (:as_of, :next_day]. Counts scale with the world
-- (:changes per kind, about users / 5000); the rows are picked by a hash, so the same world gets the
-- same changes. Run once after the first runs (the rewards they refer to exist then).

-- name: refund_rewarded_payments --
-- Refunds of earlier payments that are the basis of a standing reward (level 1 or 2): clawbacks.
UPDATE public.user_subscription_payments p
   SET status = 'REFUNDED'
 WHERE p.id IN (SELECT standing.payment_id
                FROM (SELECT DISTINCT rr.payment_id
                      FROM public.referral_rewards rr
                      WHERE rr.clawback_key IS NULL) AS standing
                ORDER BY md5(CAST(standing.payment_id AS text))
                LIMIT :changes)
   AND p.status = 'PAID';

-- name: corrected_payments --
-- Billing corrects earlier payments that are the basis of a standing reward: half of them move a month
-- later (the basis rule claws their rewards back and pays the month they now lie in), half are
-- corrected by $1.00 (clawed back and paid again at the new amount). Others than the refunds above.
-- The month is added to the UTC wall time (what `+ interval '1 month'` does in the sessions' UTC), spelled
-- with immutable functions only: Citus refuses a CASE in a distributed UPDATE that calls a stable one.
UPDATE public.user_subscription_payments p
   SET paid_at = CASE WHEN left(md5(CAST(p.id AS text)), 1) < '8'
                      THEN ((p.paid_at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
                      ELSE p.paid_at END,
       amount_cents = CASE WHEN left(md5(CAST(p.id AS text)), 1) < '8' THEN p.amount_cents ELSE p.amount_cents + 100 END
 WHERE p.id IN (SELECT standing.payment_id
                FROM (SELECT DISTINCT rr.payment_id
                      FROM public.referral_rewards rr
                      WHERE rr.clawback_key IS NULL) AS standing
                ORDER BY md5('correct:' || CAST(standing.payment_id AS text))
                LIMIT :changes)
   AND p.status = 'PAID';

-- name: failed_turned_paid --
-- FAILED payments of months long past (over 60 days before as-of) turned PAID by a late retry webhook.
UPDATE public.user_subscription_payments p
   SET status = 'PAID'
 WHERE p.id IN (SELECT f.id
                FROM public.user_subscription_payments f
                WHERE f.status = 'FAILED' AND f.paid_at < CAST(:as_of AS timestamptz) - interval '60 days'
                ORDER BY md5(CAST(f.id AS text))
                LIMIT :changes);

-- name: late_payments --
-- Payments recorded today for months long past: a month after a rewarded user's last payment, when
-- that is 60 days to a year before as-of (a replayed webhook), so they pay months never paid before.
INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at, created_at)
SELECT md5('late:' || CAST(last.user_id AS text))::uuid, last.user_id, last.amount_cents, 'PAID',
       last.paid_at + interval '1 month', CAST(:as_of AS timestamptz) + interval '6 hours'
FROM (SELECT DISTINCT ON (p.user_id) p.user_id, p.paid_at, p.amount_cents
      FROM public.user_subscription_payments p
      JOIN public.user_referral_relationships r ON r.referred_user_id = p.user_id AND r.status = 'REWARDED'
      WHERE p.status = 'PAID'
      ORDER BY p.user_id, p.paid_at DESC) AS last
WHERE last.paid_at + interval '1 month' BETWEEN CAST(:as_of AS timestamptz) - interval '365 days'
                                            AND CAST(:as_of AS timestamptz) - interval '60 days'
ORDER BY md5(CAST(last.user_id AS text))
LIMIT :changes
ON CONFLICT DO NOTHING;  -- no target: the key is (id) on one server, (user_id, id) on Citus

-- name: redemptions --
-- A few redemptions (10 points) as the app writes them: the user's balance row locked and moved,
-- the ledger row inserted, in one transaction (this statement). The UPDATE takes the row lock and
-- checks the balance again under it (Citus refuses a multi-shard SELECT … FOR UPDATE).
WITH chosen AS (
    SELECT b.user_id
    FROM public.user_point_balances b
    WHERE b.balance >= 10
    ORDER BY md5(CAST(b.user_id AS text) || 'redeem'), b.user_id
    LIMIT :changes
),
moved AS (
    UPDATE public.user_point_balances b
       SET balance = b.balance - 10, total_spent = b.total_spent - 10, updated_at = :next_day
      FROM chosen c
     WHERE b.user_id = c.user_id AND b.balance >= 10
    RETURNING b.user_id
)
INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, note, created_at)
SELECT user_id, -10, 'REDEMPTION_QUOTA', md5('redeem:' || CAST(user_id AS text))::uuid, 'bench daily redemption',
       CAST(:as_of AS timestamptz) + interval '12 hours'
FROM moved;

-- name: advance_relationships_citus --
-- cli/sample_data.sql's advance_relationships for a Citus cluster, where the relationships are a
-- reference table and Citus refuses an UPDATE of one joined with the sample's temporary plan table
-- ("relation sample_relationship is not distributed"): the same rows, one UPDATE per relationship by
-- its id (a day's activations and first payments: a few hundred rows). bench/run.py puts it in place
-- of the original for the daily step on Citus only.
CREATE OR REPLACE FUNCTION pg_temp.bench_advance_relationships(since timestamptz, until timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    p record;
    changed integer := 0;
BEGIN
    FOR p IN SELECT s.id, s.activated_plan, s.rewarded_plan
             FROM sample_relationship s
             WHERE s.created_at <= since
               AND ((s.activated_plan > since AND s.activated_plan <= until)
                    OR (s.rewarded_plan > since AND s.rewarded_plan <= until))
             ORDER BY s.id
    LOOP
        UPDATE public.user_referral_relationships AS r
           SET status       = CASE WHEN p.rewarded_plan <= until THEN 'REWARDED' ELSE 'ACTIVE' END,
               activated_at = p.activated_plan,
               rewarded_at  = CASE WHEN p.rewarded_plan <= until THEN p.rewarded_plan END
         WHERE r.id = p.id;
        changed := changed + 1;
    END LOOP;
    RETURN changed;
END;
$$;
SELECT pg_temp.bench_advance_relationships(:since, :until);
