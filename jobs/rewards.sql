-- The two reward jobs' rule, one statement per step, parameterised by :level (1 recurring-rewards,
-- 2 level2-rewards). A run plans first: plan_run derives, in one set-based statement over the whole
-- history, every ledger row owed now that this level does not hold yet (rewards and clawbacks), into
-- the session's temporary table run_plan, numbered in batches of relationships. Then each batch is
-- one transaction: batch_rows, lock the beneficiaries' balance rows, price_clawbacks, the ledger
-- writer over planned_rows, record_clawbacks, record_rewards. `{payments}` is the validated, quoted
-- REWARDS_PAYMENTS_TABLE (a table or a view).

-- name: relationship_counts --
-- The relationships this level looks at, and the bad ones skipped (REWARDED without the first-payment
-- instant their months count from).
SELECT count(*) FILTER (WHERE rewarded_at IS NOT NULL) AS scanned,
       count(*) FILTER (WHERE rewarded_at IS NULL)     AS missing_rewarded_at
FROM public.user_referral_relationships
WHERE status = 'REWARDED' AND (:level = 2 OR level = 1);

-- name: bulk_joins --
-- For the plan's transaction: over the whole history hash and merge joins are right at any size,
-- whereas statistics not yet analyzed after a big run (referral_rewards) can lead the planner into a
-- nested loop over hundreds of thousands of rows.
SET LOCAL enable_nestloop = off;

-- name: whole_history_through_the_coordinator --
-- On Citus the plan compares what is owed with what is written on the coordinator (relationships and
-- rewards are reference tables), from intermediate results it writes to disk there; over the whole
-- history they pass Citus's 1 GB guard (2M users). On plain PostgreSQL a `citus.` setting is inert.
SET LOCAL citus.max_intermediate_result_size = -1;

-- name: plan_run --
-- What the whole history owes now, less what this level already holds:
--   earning: REWARDED relationships with rewarded_at and a beneficiary at this level: level 1, the
--     referrer of a level-1 relationship; level 2, the referrer's own level-1 ACTIVE/REWARDED referrer
--     (for a level-1 relationship) or the referrer (for a stored level-2 one). Never the referred
--     user, and (via a parent) never the referrer: cycles and self-referrals earn nothing;
--   payment_month: each PAID payment of a referred user with rewarded_at <= paid_at <= as_of - hold
--     days, in its month k, k being the one with paid_at in [rewarded_at + k months, rewarded_at +
--     (k+1) months) in UTC: the calendar-month distance, or one less when rewarded_at + that many
--     months lies after paid_at (month arithmetic only clamps days down, so one step back is enough);
--   owed: each paid month k in first_month .. last_month with its basis payment, the month's
--     earliest PAID payment (by paid_at, then id);
--   written / standing: this level's rewards; a standing one is not clawed back and its basis is PAID;
--   clawback: a reward not clawed back whose basis payment is no longer PAID (refunded, failed, gone);
--   reward: an owed month with no standing reward. Its key is <prefix>:<id>:<k> for the month's first
--     reward, else <prefix>:<id>:<k>:<payment> (with ":<n>", n = 2, 3, … when that payment earned
--     this month before). A standing reward keeps its basis and amount: a payment recorded later
--     with an earlier paid_at does not re-price it.
-- Points: fixed_points + floor(amount_cents × percent/100 × points_per_usd/100), exactly in numeric.
-- A relationship's rows share a batch: batch n holds relationships n×batch_size+1 .. (n+1)×batch_size
-- of those with something to write, in id order.
CREATE TEMP TABLE run_plan AS
WITH relationship AS (
    SELECT r.id, r.referrer_user_id, r.referred_user_id, r.rewarded_at, parent.referrer_user_id IS NOT NULL AS via_parent,
           coalesce(parent.referrer_user_id,
                    CASE WHEN :level = 1 OR r.level = 2 THEN r.referrer_user_id END) AS beneficiary_user_id
    FROM public.user_referral_relationships AS r
    -- B's own relationship (at most one: referred_user_id is unique).
    LEFT JOIN public.user_referral_relationships AS parent
           ON :level = 2 AND r.level = 1
          AND parent.referred_user_id = r.referrer_user_id
          AND parent.level = 1
          AND parent.status IN ('ACTIVE', 'REWARDED')
    WHERE r.status = 'REWARDED'
      AND r.rewarded_at IS NOT NULL
      AND (:level = 2 OR r.level = 1)
),
earning AS (
    SELECT *
    FROM relationship
    WHERE beneficiary_user_id <> referred_user_id
      AND NOT (via_parent AND beneficiary_user_id = referrer_user_id)
),
payment AS (
    SELECT e.id AS relationship_id, e.beneficiary_user_id, e.rewarded_at,
           p.id AS payment_id, p.amount_cents, p.paid_at,
           CAST((extract(year FROM p.paid_at) - extract(year FROM e.rewarded_at)) * 12
                + extract(month FROM p.paid_at) - extract(month FROM e.rewarded_at) AS int) AS calendar_months
    FROM earning AS e
    JOIN {payments} AS p ON p.user_id = e.referred_user_id
    WHERE p.status = 'PAID'
      AND p.paid_at >= e.rewarded_at
      AND p.paid_at <= CAST(:counts_until AS timestamptz)
),
payment_month AS (
    SELECT payment.*,
           calendar_months - CASE WHEN rewarded_at + make_interval(months => calendar_months) > paid_at
                                  THEN 1 ELSE 0 END AS k
    FROM payment
),
owed AS (
    SELECT DISTINCT ON (relationship_id, k)
           relationship_id, beneficiary_user_id, k, payment_id,
           CAST(:fixed_points AS numeric)
           + div(amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points
    FROM payment_month
    WHERE k BETWEEN :first_month AND :last_month
    ORDER BY relationship_id, k, paid_at, payment_id
),
written AS MATERIALIZED (
    SELECT idempotency_key, relationship_id, month, payment_id, beneficiary_user_id, points, clawback_key
    FROM public.referral_rewards
    WHERE level = :level
),
-- The bases of this level's rewards not clawed back that are still PAID, as a set of its own
-- (Citus joins the distributed feed with it shard by shard).
paid_basis AS MATERIALIZED (
    SELECT p.id
    FROM {payments} AS p
    WHERE p.status = 'PAID'
      AND p.id IN (SELECT payment_id FROM written WHERE clawback_key IS NULL)
),
clawback AS (
    SELECT w.*
    FROM written AS w
    WHERE w.clawback_key IS NULL
      AND NOT EXISTS (SELECT 1 FROM paid_basis AS b WHERE b.id = w.payment_id)
),
standing AS (
    SELECT w.relationship_id, w.month
    FROM written AS w
    WHERE w.clawback_key IS NULL
      AND EXISTS (SELECT 1 FROM paid_basis AS b WHERE b.id = w.payment_id)
),
unrewarded AS MATERIALIZED (
    SELECT o.*, format('%s:%s:%s', CAST(:key_prefix AS text), o.relationship_id, o.k) AS first_key
    FROM owed AS o
    WHERE NOT EXISTS (SELECT 1 FROM standing AS s  -- at most one reward of a month stands
                      WHERE s.relationship_id = o.relationship_id AND s.month = o.k)
),
-- What an unrewarded month held before (rewards since clawed back): all of them, and those of the
-- same payment under a re-earn key. Counted for these few months only, not for all history.
earlier AS (
    SELECT u.relationship_id, u.k,
           count(*) AS rewards,
           count(*) FILTER (WHERE w.payment_id = u.payment_id AND w.idempotency_key <> u.first_key) AS on_payment
    FROM unrewarded AS u
    JOIN written AS w ON w.relationship_id = u.relationship_id AND w.month = u.k
    GROUP BY u.relationship_id, u.k
),
reward AS (
    SELECT u.*, coalesce(e.rewards, 0) AS earlier_rewards, coalesce(e.on_payment, 0) AS earlier_on_payment
    FROM unrewarded AS u
    LEFT JOIN earlier AS e ON e.relationship_id = u.relationship_id AND e.k = u.k
),
planned AS (
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
    WHERE points <> 0
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
    FROM clawback
)
SELECT planned.*, (dense_rank() OVER (ORDER BY relationship_id) - 1) / :batch_size AS batch
FROM planned;

-- name: index_plan --
CREATE INDEX ON pg_temp.run_plan (batch);

-- name: plan_size --
SELECT count(DISTINCT relationship_id) AS relationships, coalesce(max(batch) + 1, 0) AS batches
FROM pg_temp.run_plan;

-- name: batch_rows --
-- One batch of the plan, as the statements below read it.
CREATE TEMP TABLE planned_rows ON COMMIT DROP AS
SELECT * FROM pg_temp.run_plan WHERE batch = :batch;

-- name: batch_relationships --
SELECT count(DISTINCT relationship_id) FROM planned_rows;

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
