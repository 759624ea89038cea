-- The two reward jobs' rule, one statement per step, parameterised by :level (1 recurring-rewards,
-- 2 level2-rewards). A batch is the relationships with id in (:after_id, :last_id]; its steps run in
-- one transaction: plan_batch, lock the beneficiaries' balance rows, price_clawbacks, the ledger writer
-- over planned_rows, record_rewards, record_clawbacks. `{payments}` is the validated, quoted
-- REWARDS_PAYMENTS_TABLE (a table or a view).

-- name: count_relationships --
SELECT count(*) FROM public.user_referral_relationships;

-- name: batch_end --
-- The next batch_size relationship ids after :after_id: how many, and the last. When fewer are
-- left, the last batch runs to the end of the id space, so rewards of relationships since deleted
-- are still seen.
WITH ids AS (
    SELECT id
    FROM public.user_referral_relationships
    WHERE id > CAST(:after_id AS uuid)
    ORDER BY id
    LIMIT :batch_size
)
SELECT count(*) AS relationships, (SELECT CAST(id AS text) FROM ids ORDER BY id DESC LIMIT 1) AS last_id
FROM ids;

-- name: plan_batch --
-- What the batch owes now, less what this level already holds:
--   earning: REWARDED relationships with rewarded_at and a beneficiary at this level: level 1, the
--     referrer of a level-1 relationship; level 2, the referrer's own level-1 ACTIVE/REWARDED referrer
--     (for a level-1 relationship) or the referrer (for a stored level-2 one). Never the referred
--     user, and (via a parent) never the referrer: cycles and self-referrals earn nothing;
--   owed: each paid month k in first_month .. last_month, month k being [rewarded_at + k months,
--     rewarded_at + (k+1) months) in UTC, with its basis payment: the earliest PAID payment of the
--     referred user in it (by paid_at, then id) with paid_at <= as_of - hold days;
--   written / standing: this level's rewards of the batch; a standing one is not clawed back;
--   clawback: a standing reward whose basis payment is no longer PAID (refunded, failed, gone);
--   reward: an owed month with no standing reward once this run's clawbacks are done. Its key is
--     <prefix>:<id>:<k> for the month's first reward, else <prefix>:<id>:<k>:<payment> (with
--     ":<n>", n = 2, 3, … when that payment earned this month before). A standing reward keeps its
--     basis and amount: a payment recorded later with an earlier paid_at does not re-price it.
-- Points: fixed_points + floor(amount_cents × percent/100 × points_per_usd/100), exactly in numeric.
CREATE TEMP TABLE planned_rows ON COMMIT DROP AS
WITH relationship AS (
    SELECT r.id, r.referrer_user_id, r.referred_user_id, r.rewarded_at, parent.referrer_user_id IS NOT NULL AS via_parent,
           coalesce(parent.referrer_user_id,
                    CASE WHEN :level = 1 OR r.level = 2 THEN r.referrer_user_id END) AS beneficiary_user_id
    FROM public.user_referral_relationships AS r
    -- B's own relationship, one probe of the unique index on referred_user_id.
    LEFT JOIN LATERAL (
        SELECT p.referrer_user_id
        FROM public.user_referral_relationships AS p
        WHERE :level = 2 AND r.level = 1
          AND p.referred_user_id = r.referrer_user_id
          AND p.level = 1
          AND p.status IN ('ACTIVE', 'REWARDED')
        LIMIT 1
    ) AS parent ON TRUE
    WHERE r.id > CAST(:after_id AS uuid) AND r.id <= CAST(:last_id AS uuid)
      AND r.status = 'REWARDED'
      AND r.rewarded_at IS NOT NULL
      AND (:level = 2 OR r.level = 1)
),
earning AS (
    SELECT *
    FROM relationship
    WHERE beneficiary_user_id <> referred_user_id
      AND NOT (via_parent AND beneficiary_user_id = referrer_user_id)
),
paid AS MATERIALIZED (
    -- The PAID payments of the batch's referred users that count by now, fetched per user through
    -- (user_id, paid_at) on PostgreSQL and shard-locally on Citus.
    SELECT p.id, p.user_id, p.amount_cents, p.paid_at
    FROM {payments} AS p
    WHERE p.user_id = ANY(ARRAY(SELECT referred_user_id FROM earning))
      AND p.status = 'PAID'
      AND p.paid_at <= CAST(:counts_until AS timestamptz)
),
owed AS (
    -- The basis payment of each paid month: the first of the month's payments by (paid_at, id), by
    -- DISTINCT ON rather than a LATERAL … LIMIT 1, which Citus cannot run beside a reference table.
    SELECT DISTINCT ON (e.id, m.k)
           e.id AS relationship_id, e.beneficiary_user_id, m.k, p.id AS payment_id,
           CAST(:fixed_points AS numeric)
           + div(p.amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000)
             AS points
    FROM earning AS e
    CROSS JOIN generate_series(CAST(:first_month AS int), CAST(:last_month AS int)) AS m(k)
    JOIN paid AS p
      ON p.user_id = e.referred_user_id
     AND p.paid_at >= e.rewarded_at + make_interval(months => m.k)
     AND p.paid_at <  e.rewarded_at + make_interval(months => m.k + 1)
    WHERE e.rewarded_at + make_interval(months => m.k) <= CAST(:counts_until AS timestamptz)
    ORDER BY e.id, m.k, p.paid_at, p.id
),
written AS (
    SELECT rr.*
    FROM public.referral_rewards AS rr
    WHERE rr.relationship_id > CAST(:after_id AS uuid) AND rr.relationship_id <= CAST(:last_id AS uuid)
      AND rr.level = :level
),
clawback AS (
    SELECT w.*
    FROM written AS w
    WHERE w.clawback_key IS NULL
      -- An uncorrelated set of the batch's PAID bases (Citus runs no correlated subquery here).
      AND w.payment_id <> ALL(ARRAY(SELECT p.id FROM {payments} AS p
                                    WHERE p.id = ANY(ARRAY(SELECT payment_id FROM written))
                                      AND p.status = 'PAID'))
),
standing AS (
    SELECT w.relationship_id, w.month
    FROM written AS w
    WHERE w.clawback_key IS NULL
      AND w.idempotency_key NOT IN (SELECT idempotency_key FROM clawback)
),
-- Counts by month and by payment joined in, not correlated subqueries (which Citus mis-evaluates
-- beside a NOT EXISTS over results it planned apart): the same numbers on both engines.
month_rewards AS (
    SELECT relationship_id, month, count(*) AS rewards
    FROM written
    GROUP BY relationship_id, month
),
payment_rewards AS (
    SELECT relationship_id, month, payment_id, count(*) AS rewards
    FROM written
    WHERE idempotency_key <> format('%s:%s:%s', CAST(:key_prefix AS text), relationship_id, month)
    GROUP BY relationship_id, month, payment_id
),
reward AS (
    SELECT o.*,
           format('%s:%s:%s', CAST(:key_prefix AS text), o.relationship_id, o.k) AS first_key,
           coalesce(mr.rewards, 0) AS earlier_rewards,
           coalesce(pr.rewards, 0) AS earlier_on_payment
    FROM owed AS o
    LEFT JOIN month_rewards AS mr ON mr.relationship_id = o.relationship_id AND mr.month = o.k
    LEFT JOIN payment_rewards AS pr
           ON pr.relationship_id = o.relationship_id AND pr.month = o.k AND pr.payment_id = o.payment_id
    LEFT JOIN standing AS s ON s.relationship_id = o.relationship_id AND s.month = o.k
    WHERE s.relationship_id IS NULL  -- at most one reward of a month stands (uq_referral_rewards_one_standing)
)
SELECT 'reward'                                AS action,
       beneficiary_user_id                     AS user_id,
       points                                  AS delta,
       CAST(:ledger_type AS text)              AS type,
       relationship_id,
       k                                       AS month,
       payment_id,
       points,
       CASE WHEN earlier_rewards = 0 THEN first_key
            WHEN earlier_on_payment = 0 THEN format('%s:%s', first_key, payment_id)
            ELSE format('%s:%s:%s', first_key, payment_id, earlier_on_payment + 1)
       END                                     AS idempotency_key,
       CAST(NULL AS text)                      AS reward_key,
       format('%s month %s, basis payment %s', CAST(:note_label AS text), k, payment_id) AS note
FROM reward
UNION ALL
SELECT 'clawback',
       beneficiary_user_id,
       NULL,                                   -- priced by price_clawbacks, under the balance lock
       'REFERRAL_CLAWBACK',
       relationship_id,
       month,
       payment_id,
       points,
       'clawback:' || idempotency_key,
       idempotency_key,
       format('clawback of %s: basis payment %s is no longer PAID', idempotency_key, payment_id)
FROM clawback;

-- name: beneficiaries --
SELECT DISTINCT user_id FROM planned_rows ORDER BY user_id;

-- name: price_clawbacks --
-- Never below zero: a clawback takes min(reward, what the beneficiary's ledger balance still holds
-- after this batch's earlier clawbacks, in key order); the rest is unrecovered. Run after the
-- beneficiaries' balance rows are locked, so a redemption committed meanwhile is counted.
WITH balance AS (
    SELECT t.user_id, sum(t.delta) AS points
    FROM public.user_point_transactions AS t
    WHERE t.user_id IN (SELECT user_id FROM planned_rows WHERE action = 'clawback')
    GROUP BY t.user_id
),
taken AS (
    SELECT c.idempotency_key,
           least(c.points,
                 greatest(0, coalesce(b.points, 0)
                             - (sum(c.points) OVER (PARTITION BY c.user_id ORDER BY c.idempotency_key) - c.points)))
             AS points
    FROM planned_rows AS c
    LEFT JOIN balance AS b ON b.user_id = c.user_id
    WHERE c.action = 'clawback'
)
UPDATE planned_rows AS p
SET delta = -taken.points
FROM taken
WHERE p.idempotency_key = taken.idempotency_key;

-- name: planned_rows --
-- (A fragment: the candidates of the ledger writer.)
SELECT user_id, delta, type, relationship_id AS ref_id, idempotency_key, note FROM planned_rows

-- name: record_rewards --
-- Each reward now in the ledger, with its basis (points as the ledger row holds them).
INSERT INTO public.referral_rewards
       (idempotency_key, relationship_id, level, month, payment_id, beneficiary_user_id, points,
        rewarded_at, run_id)
SELECT p.idempotency_key, p.relationship_id, :level, p.month, p.payment_id, p.user_id, t.delta,
       :as_of, :run_id
FROM planned_rows AS p
JOIN public.user_point_transactions AS t ON t.idempotency_key = p.idempotency_key
WHERE p.action = 'reward'
ON CONFLICT (idempotency_key) DO NOTHING;

-- name: record_clawbacks --
-- Each clawback now in the ledger (or taking 0 points: nothing to write, all unrecovered). The
-- clawbacks found in the ledger are gathered first: Citus updates a replicated table only from
-- replicated tables and results, not joined with a distributed table in the same statement.
WITH in_ledger AS MATERIALIZED (
    SELECT p.reward_key, p.idempotency_key, p.delta
    FROM planned_rows AS p
    WHERE p.action = 'clawback'
      AND (p.delta = 0
           OR p.idempotency_key IN (SELECT t.idempotency_key
                                    FROM public.user_point_transactions AS t
                                    WHERE t.idempotency_key IN (SELECT idempotency_key FROM planned_rows
                                                                WHERE action = 'clawback')))
),
recorded AS (
    UPDATE public.referral_rewards AS rr
    SET clawback_key       = c.idempotency_key,
        clawed_back_points = -c.delta,
        unrecovered_points = rr.points + c.delta,
        clawed_back_at     = :as_of,
        clawback_run_id    = :run_id
    FROM in_ledger AS c
    WHERE rr.idempotency_key = c.reward_key
      AND rr.clawback_key IS NULL
    RETURNING rr.clawed_back_points, rr.unrecovered_points
)
SELECT count(*)                              AS clawbacks,
       coalesce(sum(clawed_back_points), 0)  AS clawed_back_points,
       coalesce(sum(unrecovered_points), 0)  AS unrecovered_points
FROM recorded;

-- name: unstorable --
SELECT relationship_id, month, action, points
FROM planned_rows
WHERE idempotency_key = ANY(CAST(:keys AS text[]))
ORDER BY idempotency_key;

-- name: payments_columns --
-- The columns of the payments feed (table or view), to refuse one that lacks what the jobs read.
SELECT a.attname
FROM pg_attribute AS a
WHERE a.attrelid = to_regclass(:feed) AND a.attnum > 0 AND NOT a.attisdropped;

-- name: missing_rewarded_at --
-- Bad data, skipped and counted: REWARDED without the first-payment instant its months count from.
SELECT count(*)
FROM public.user_referral_relationships
WHERE status = 'REWARDED' AND rewarded_at IS NULL AND (:level = 2 OR level = 1);
