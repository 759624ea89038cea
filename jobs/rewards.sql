-- The two reward jobs' rule (docs/rules.md), one statement per step, parameterised by :level
-- (1 recurring-rewards, 2 level2-rewards). A run plans first: plan_run derives, in one set-based
-- statement over the whole history, every ledger row owed now that this level does not hold yet
-- (rewards and clawbacks), into the session's temporary table run_plan, numbered in batches of about
-- REWARDS_BATCH_SIZE rows, a referred user's rows together (a month is identified by referred user,
-- level and month). Then each batch is one transaction: batch_rows, lock the beneficiaries' balance
-- rows, price_clawbacks, the ledger writer over planned_rows, record_clawbacks, record_rewards. Last,
-- with REWARDS_RECOVERY=on, the recovery: plan_recoveries, then per batch recovery_rows, the ledger
-- writer, attribute_recoveries.
-- `{payments}` is the usable rows of the validated, quoted REWARDS_PAYMENTS_TABLE (usable_feed).

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

-- name: month_facts --
-- THE derivation of both reward jobs: what the whole history owes now at one level, less what the
-- level already holds (docs/rules.md). The jobs plan from it (plan_run), and `explain` reads the same
-- statement for one user's referred users (:only_referred; NULL for the jobs) with :explain on, which
-- adds the months' other states (paid, nothing to pay, on hold; constant-false branches otherwise).
--   earning: REWARDED relationships with rewarded_at and a beneficiary at this level: level 1, the
--     referrer of a level-1 relationship; level 2, the referrer's own level-1 ACTIVE/REWARDED referrer
--     (for a level-1 relationship) or the referrer (for a stored level-2 one). Never the referred
--     user, and (via a parent) never the referrer: cycles and self-referrals earn nothing;
--   payment_month: each usable PAID payment of a referred user with rewarded_at <= paid_at <= as_of,
--     in its month k, k being the one with paid_at in [rewarded_at + k months, rewarded_at + (k+1)
--     months) in UTC: the calendar-month distance, or one less when rewarded_at + that many months lies
--     after paid_at (month arithmetic only clamps days down, so one step back is enough); it is *held*
--     when paid after as_of - hold days (:seen_until is :counts_until for the jobs, which never read them);
--   owed: each paid month k in first_month .. last_month of a referred user, with its basis payment,
--     the month's earliest PAID payment not held (by paid_at, then id);
--   standing: this level's rewards not clawed back, each with whether its basis holds: the payment is
--     usable, PAID, at the amount recorded, and in the reward's month under the grid of the referred
--     user's current relationship (no grid, no month test); and its rank among the month's holding
--     rewards (the earliest written is kept);
--   clawback: a standing reward dated at or before as_of whose basis does not hold, or that is not the
--     month's first holding reward. A reward dated after as_of is left to the runs of later as-ofs;
--   reward: an owed month with no reward left standing. Its key is <prefix>:<relationship>:<k> for the
--     relationship's first reward of the month, else <prefix>:<relationship>:<k>:<payment> (with
--     ":<n>", n = 2, 3, … when that payment earned this month before).
-- Points: fixed_points + floor(amount_cents × percent/100 × points_per_usd/100), exactly in numeric.
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
      AND (CAST(:only_referred AS uuid[]) IS NULL OR r.referred_user_id = ANY(CAST(:only_referred AS uuid[])))
),
earning AS (
    SELECT *
    FROM relationship
    WHERE beneficiary_user_id <> referred_user_id
      AND NOT (via_parent AND beneficiary_user_id = referrer_user_id)
),
payment AS (
    SELECT e.id AS relationship_id, e.referred_user_id, e.beneficiary_user_id, e.rewarded_at,
           p.id AS payment_id, p.amount_cents, p.paid_at, p.paid_at > CAST(:counts_until AS timestamptz) AS held,
           CAST((extract(year FROM p.paid_at) - extract(year FROM e.rewarded_at)) * 12
                + extract(month FROM p.paid_at) - extract(month FROM e.rewarded_at) AS int) AS calendar_months
    FROM earning AS e
    JOIN {payments} AS p ON p.user_id = e.referred_user_id
    WHERE p.status = 'PAID'
      AND p.paid_at >= e.rewarded_at
      AND p.paid_at <= CAST(:seen_until AS timestamptz)
),
payment_month AS (
    SELECT payment.*,
           calendar_months - CASE WHEN rewarded_at + make_interval(months => calendar_months) > paid_at
                                  THEN 1 ELSE 0 END AS k
    FROM payment
),
owed AS (
    SELECT DISTINCT ON (referred_user_id, k)
           relationship_id, referred_user_id, beneficiary_user_id, k, payment_id, paid_at, amount_cents,
           CAST(:fixed_points AS numeric)
           + div(amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points
    FROM payment_month
    WHERE k BETWEEN :first_month AND :last_month AND NOT held
    ORDER BY referred_user_id, k, paid_at, payment_id
),
-- (explain) Months whose PAID payments all lie within the hold: their earliest such payment.
on_hold AS (
    SELECT DISTINCT ON (referred_user_id, k)
           relationship_id, referred_user_id, beneficiary_user_id, k, payment_id, paid_at, amount_cents,
           CAST(:fixed_points AS numeric)
           + div(amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points
    FROM payment_month
    WHERE :explain AND k BETWEEN :first_month AND :last_month AND held
    ORDER BY referred_user_id, k, paid_at, payment_id
),
written AS MATERIALIZED (
    SELECT idempotency_key, relationship_id, coalesce(referred_user_id, relationship_id) AS month_owner,
           referred_user_id, month, payment_id, basis_amount_cents, beneficiary_user_id, points, rewarded_at,
           clawback_key
    FROM public.referral_rewards
    WHERE level = :level
      AND (CAST(:only_referred AS uuid[]) IS NULL OR referred_user_id = ANY(CAST(:only_referred AS uuid[])))
),
-- The feed rows of the standing rewards' bases, as a set of its own (Citus joins the distributed feed
-- with it shard by shard).
basis AS MATERIALIZED (
    SELECT p.id, p.status, p.amount_cents, p.paid_at
    FROM {payments} AS p
    WHERE p.id IN (SELECT payment_id FROM written WHERE clawback_key IS NULL)
),
judged AS (
    SELECT w.*,
           CASE WHEN b.id IS NULL THEN 'is no longer in the payments feed'
                WHEN b.status <> 'PAID' THEN 'is ' || b.status
                WHEN b.amount_cents <> w.basis_amount_cents
                     THEN format('was corrected from %s to %s cents', w.basis_amount_cents, b.amount_cents)
                WHEN NOT (grid.rewarded_at IS NULL
                          OR (b.paid_at >= grid.rewarded_at + make_interval(months => w.month)
                              AND b.paid_at < grid.rewarded_at + make_interval(months => w.month + 1)))
                     THEN format('moved out of month %s', w.month)
           END AS broken
    FROM written AS w
    LEFT JOIN basis AS b ON b.id = w.payment_id
    -- The referred user's current relationship, whatever its status: its grid places the months.
    LEFT JOIN public.user_referral_relationships AS grid ON grid.referred_user_id = w.referred_user_id
    WHERE w.clawback_key IS NULL
),
standing AS MATERIALIZED (
    SELECT judged.*,
           CASE WHEN broken IS NULL
                THEN row_number() OVER (PARTITION BY month_owner, month, broken IS NULL
                                        ORDER BY rewarded_at, idempotency_key)
           END AS holding_rank
    FROM judged
),
clawback AS (
    SELECT s.*, coalesce(s.broken, 'the month is paid by an earlier reward') AS reason
    FROM standing AS s
    WHERE s.rewarded_at <= :as_of
      AND (s.broken IS NOT NULL OR s.holding_rank > 1)
),
kept AS (  -- the rewards still standing after this run's clawbacks
    SELECT s.*
    FROM standing AS s
    WHERE NOT (s.rewarded_at <= :as_of AND (s.broken IS NOT NULL OR s.holding_rank > 1))
),
unrewarded AS MATERIALIZED (
    SELECT o.*, format('%s:%s:%s', CAST(:key_prefix AS text), o.relationship_id, o.k) AS first_key
    FROM owed AS o
    WHERE NOT EXISTS (SELECT 1 FROM kept AS s  -- at most one reward of a month stands
                      WHERE s.month_owner = o.referred_user_id AND s.month = o.k)
),
-- What an unrewarded month held before under this relationship's keys (rewards since clawed back):
-- all of them, and those of the same payment under a re-earn key. Counted for these few months only.
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
facts AS (
    SELECT 'reward'                                AS action,
           'to be written'                         AS state,
           beneficiary_user_id                     AS user_id,
           points                                  AS delta,
           CAST(:ledger_type AS text)              AS type,
           relationship_id,
           referred_user_id,
           k                                       AS month,
           payment_id,
           paid_at                                 AS basis_paid_at,
           amount_cents                            AS basis_amount_cents,
           points,
           CASE WHEN earlier_rewards = 0 THEN first_key
                WHEN earlier_on_payment = 0 THEN format('%s:%s', first_key, payment_id)
                ELSE format('%s:%s:%s', first_key, payment_id, earlier_on_payment + 1)
           END                                     AS idempotency_key,
           CAST(NULL AS text)                      AS reward_key,
           CAST(NULL AS timestamptz)               AS written_at,
           format('%s month %s, basis payment %s', CAST(:note_label AS text), k, payment_id) AS note
    FROM reward
    WHERE points <> 0
    UNION ALL
    SELECT 'clawback',
           'to be clawed back',
           beneficiary_user_id,
           NULL,                                   -- priced by price_clawbacks, under the balance lock
           'REFERRAL_CLAWBACK',
           relationship_id,
           month_owner,
           month,
           payment_id,
           NULL,
           NULL,
           points,
           'clawback:' || idempotency_key,
           idempotency_key,
           rewarded_at,
           format('clawback of %s: basis payment %s %s', idempotency_key, payment_id, reason)
    FROM clawback
    -- The rest only for explain (:explain): what stands, what is owed nothing, what waits for the hold.
    UNION ALL
    SELECT NULL, 'nothing to pay', beneficiary_user_id, NULL, NULL, relationship_id, referred_user_id, k,
           payment_id, paid_at, amount_cents, points, NULL, NULL, NULL,
           'the reward setting gives 0 points for this payment'
    FROM reward
    WHERE :explain AND points = 0
    UNION ALL
    SELECT NULL, 'paid', beneficiary_user_id, NULL, NULL, relationship_id, month_owner, month, payment_id,
           NULL, basis_amount_cents, points, idempotency_key, NULL, rewarded_at,
           CASE WHEN broken IS NOT NULL THEN format('basis payment %s %s; written after the as-of, so a later run'
                                                     ' claws it back', payment_id, broken)
                WHEN holding_rank > 1 THEN 'a second reward of the month, written after the as-of'
           END
    FROM kept
    WHERE :explain
    UNION ALL
    SELECT NULL, 'on hold', h.beneficiary_user_id, NULL, NULL, h.relationship_id, h.referred_user_id, h.k,
           h.payment_id, h.paid_at, h.amount_cents, h.points, NULL, NULL, NULL,
           format('counts from %s', h.paid_at + make_interval(days => CAST(:hold_days AS int)))
    FROM on_hold AS h
    WHERE :explain
      AND NOT EXISTS (SELECT 1 FROM owed AS o WHERE o.referred_user_id = h.referred_user_id AND o.k = h.k)
      AND NOT EXISTS (SELECT 1 FROM kept AS s WHERE s.month_owner = h.referred_user_id AND s.month = h.k)
)
SELECT * FROM facts

-- name: plan_run --
-- What the run writes (month_facts' rewards and clawbacks), into the session's run_plan, in batches of
-- about batch_size rows: counted in referred user order, a referred user's rows share a batch, and a
-- batch starts at each user whose first row passes a multiple of batch_size. Sized by rows, not by
-- users: on a shape with many payments per relationship, 5,000 referred users were 23,000 rows to
-- write and a 4 s hold of their beneficiaries' locks.
CREATE TEMP TABLE run_plan AS
SELECT planned.*, dense_rank() OVER (ORDER BY planned.rows_before / :batch_size) - 1 AS batch
FROM (
    SELECT facts.*, CAST(NULL AS numeric) AS expired_points,
           count(*) OVER (ORDER BY facts.referred_user_id)
         - count(*) OVER (PARTITION BY facts.referred_user_id) AS rows_before
    FROM ({month_facts}) AS facts
    WHERE facts.action IS NOT NULL
) AS planned;

-- name: index_plan --
CREATE INDEX ON pg_temp.run_plan (batch);

-- name: plan_size --
SELECT count(DISTINCT referred_user_id) AS referred_users, coalesce(max(batch) + 1, 0) AS batches
FROM pg_temp.run_plan;

-- name: batch_rows --
-- One batch of the plan, as the statements below read it.
CREATE TEMP TABLE planned_rows ON COMMIT DROP AS
SELECT * FROM pg_temp.run_plan WHERE batch = :batch;

-- name: batch_referred_users --
SELECT count(DISTINCT referred_user_id) FROM planned_rows;

-- name: beneficiaries --
SELECT DISTINCT user_id FROM planned_rows ORDER BY user_id;

-- name: hash_joins_only --
-- For price_clawbacks alone (undone by default_joins after it): it reads its beneficiaries' whole
-- ledgers, whose size the planner cannot know. Estimated at the average user's few rows, the self-joins
-- of an influencer's tens of thousands ran as nested loops, quadratic (issue 26, a random-shape 200k
-- dataset: 3 clawbacks of a beneficiary with 30,018 ledger rows over 120 s; with hash joins 0.12 s).
SET LOCAL enable_nestloop = off;

-- name: default_joins --
RESET enable_nestloop;

-- name: price_clawbacks --
-- What each clawback of the batch takes, run after the beneficiaries' balance rows are locked (so a
-- redemption committed meanwhile is counted): min(the reward's points not yet expired, what the
-- beneficiary's ledger balance still holds after this batch's earlier clawbacks, in key order).
-- The points already expired are the overlap of the reward's lot with the EXPIRY rows in the
-- beneficiary's FIFO stack (docs/rules.md): lots (positive rows, each less its own clawback) stacked
-- in (created_at, id) order, consumed by the other debits in (created_at, id) order. Only the users
-- with an EXPIRY row need the stack. Run with hash joins only (hash_joins_only): the beneficiaries'
-- rows are still read through the ledger's user_id index, by the array of their ids.
WITH clawed AS (
    SELECT idempotency_key, reward_key, user_id, points FROM planned_rows WHERE action = 'clawback'
),
ledger AS MATERIALIZED (
    SELECT t.id, t.user_id, t.delta, t.type, t.idempotency_key, t.created_at
    FROM public.user_point_transactions AS t
    WHERE t.user_id = ANY (ARRAY(SELECT user_id FROM clawed))
),
balance AS (
    SELECT user_id, sum(delta) AS points FROM ledger GROUP BY user_id
),
expiring AS (
    SELECT DISTINCT user_id FROM ledger WHERE type = 'EXPIRY'
),
own_clawback AS (  -- a clawback:{key} row of a reward in the same user's ledger
    SELECT c.user_id, c.idempotency_key, substr(c.idempotency_key, 10) AS lot_key, c.delta
    FROM ledger AS c
    JOIN ledger AS lot ON lot.user_id = c.user_id AND lot.idempotency_key = substr(c.idempotency_key, 10)
    WHERE starts_with(c.idempotency_key, 'clawback:') AND c.delta < 0 AND lot.delta > 0
      AND c.user_id IN (SELECT user_id FROM expiring)
),
lot AS (
    SELECT l.user_id, l.idempotency_key, l.delta + coalesce(o.delta, 0) AS size,
           sum(l.delta + coalesce(o.delta, 0)) OVER (PARTITION BY l.user_id ORDER BY l.created_at, l.id) AS lot_end
    FROM ledger AS l
    LEFT JOIN own_clawback AS o ON o.user_id = l.user_id AND o.lot_key = l.idempotency_key
    WHERE l.delta > 0 AND l.user_id IN (SELECT user_id FROM expiring)
),
debit AS (
    SELECT d.user_id, d.type, -d.delta AS size,
           sum(-d.delta) OVER (PARTITION BY d.user_id ORDER BY d.created_at, d.id) AS debit_end
    FROM ledger AS d
    WHERE d.delta < 0 AND d.user_id IN (SELECT user_id FROM expiring)
      AND NOT EXISTS (SELECT 1 FROM own_clawback AS o
                      WHERE o.user_id = d.user_id AND o.idempotency_key = d.idempotency_key)
),
expired AS (
    SELECT c.idempotency_key,
           sum(greatest(0, least(l.lot_end, d.debit_end) - greatest(l.lot_end - l.size, d.debit_end - d.size)))
             AS points
    FROM clawed AS c
    JOIN lot AS l ON l.user_id = c.user_id AND l.idempotency_key = c.reward_key
    JOIN debit AS d ON d.user_id = l.user_id AND d.type = 'EXPIRY'
    GROUP BY c.idempotency_key
),
unexpired AS (
    SELECT c.idempotency_key, c.user_id, least(c.points, coalesce(e.points, 0)) AS expired,
           c.points - least(c.points, coalesce(e.points, 0)) AS points
    FROM clawed AS c
    LEFT JOIN expired AS e ON e.idempotency_key = c.idempotency_key
),
taken AS (
    SELECT u.idempotency_key, u.expired,
           least(u.points,
                 greatest(0, coalesce(b.points, 0)
                             - (sum(u.points) OVER (PARTITION BY u.user_id ORDER BY u.idempotency_key) - u.points)))
             AS points
    FROM unexpired AS u
    LEFT JOIN balance AS b ON b.user_id = u.user_id
)
UPDATE planned_rows AS p
SET delta = -taken.points,
    expired_points = taken.expired
FROM taken
WHERE p.idempotency_key = taken.idempotency_key;

-- name: planned_rows --
-- (A fragment: the candidates of the ledger writer.)
SELECT user_id, delta, type, relationship_id AS ref_id, idempotency_key, note FROM planned_rows

-- name: record_rewards --
-- Each reward now in the ledger as the rule gives it (same user, type and points), with its basis. A
-- ledger row that holds the key with anything else was not written by this rule: the month is not
-- taken as paid (conflicting_keys reports it, and the rules audit finds it).
WITH recorded AS (
    INSERT INTO public.referral_rewards
           (idempotency_key, relationship_id, referred_user_id, level, month, payment_id, basis_paid_at,
            basis_amount_cents, beneficiary_user_id, points, rewarded_at, run_id)
    SELECT p.idempotency_key, p.relationship_id, p.referred_user_id, :level, p.month, p.payment_id,
           p.basis_paid_at, p.basis_amount_cents, p.user_id, t.delta, :as_of, :run_id
    FROM planned_rows AS p
    JOIN public.user_point_transactions AS t ON t.idempotency_key = p.idempotency_key
    WHERE p.action = 'reward'
      -- Not `t.user_id = p.user_id AND …`: the planner, which cannot tell the key's unique index from
      -- idx_upt_user_id by their estimates, took the user's index and filtered the key, reading the whole
      -- ledger of an influencer once per reward of theirs (1.2 s of a 3.2 s run, 200k users, seed 4 of
      -- --shape random). This comparison no index serves, so the key's index finds each row.
      AND (t.user_id, t.type, t.delta) IS NOT DISTINCT FROM (p.user_id, p.type, p.delta)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM recorded) AS recorded,
       (SELECT count(*) FROM planned_rows WHERE action = 'reward') AS planned;

-- name: planned_rows_among --
-- (A fragment: the candidates of the ledger writer, among the given keys.)
SELECT user_id, delta, type, relationship_id AS ref_id, idempotency_key, note
FROM planned_rows
WHERE idempotency_key = ANY(CAST(:keys AS text[]))

-- name: conflicting_keys --
-- The batch's rewards whose key the ledger already holds with another user, type or amount.
SELECT p.idempotency_key, p.relationship_id, p.month, p.delta AS points, t.delta AS ledger_points,
       t.type AS ledger_type
FROM planned_rows AS p
JOIN public.user_point_transactions AS t ON t.idempotency_key = p.idempotency_key
WHERE p.action = 'reward'
  AND NOT (t.user_id = p.user_id AND t.type = p.type AND t.delta = p.delta)
ORDER BY p.idempotency_key;

-- name: rekey_conflicting --
-- Those rewards take the next key of their month's sequence, as a re-earned month would: after the first
-- key F comes F:{payment}, then F:{payment} numbered 2, 3, … (as in month_facts); returns the new keys.
WITH conflicting AS (
    SELECT idempotency_key, payment_id,
           format('%s:%s:%s', CAST(:key_prefix AS text), relationship_id, month) AS first_key
    FROM planned_rows
    WHERE idempotency_key = ANY(CAST(:keys AS text[]))
)
UPDATE planned_rows AS p
SET idempotency_key = CASE
        WHEN c.idempotency_key = c.first_key THEN format('%s:%s', c.first_key, c.payment_id)
        WHEN c.idempotency_key = format('%s:%s', c.first_key, c.payment_id)
             THEN format('%s:%s:%s', c.first_key, c.payment_id, 2)
        ELSE format('%s:%s:%s', c.first_key, c.payment_id,
                    CAST(substr(c.idempotency_key, length(format('%s:%s:', c.first_key, c.payment_id)) + 1) AS int) + 1)
    END
FROM conflicting AS c
WHERE p.idempotency_key = c.idempotency_key
RETURNING p.idempotency_key;

-- name: record_clawbacks --
-- Each clawback now in the ledger (or taking 0 points: nothing to write; the reward's points were
-- already expired or are unrecovered). The clawbacks found in the ledger are gathered first: Citus
-- updates a replicated table only from replicated tables and results, not joined with a distributed
-- table in the same statement.
WITH in_ledger AS MATERIALIZED (
    SELECT p.reward_key, p.idempotency_key, p.delta, p.expired_points
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
        expired_points     = c.expired_points,
        unrecovered_points = rr.points + c.delta - c.expired_points,
        clawed_back_at     = :as_of,
        clawback_run_id    = :run_id
    FROM in_ledger AS c
    WHERE rr.idempotency_key = c.reward_key
      AND rr.clawback_key IS NULL
    RETURNING rr.clawed_back_points, rr.expired_points, rr.unrecovered_points
)
SELECT count(*)                              AS clawbacks,
       coalesce(sum(clawed_back_points), 0)  AS clawed_back_points,
       coalesce(sum(expired_points), 0)      AS expired_points,
       coalesce(sum(unrecovered_points), 0)  AS unrecovered_points
FROM recorded;

-- name: plan_recoveries --
-- Recovery, after the credits: the beneficiaries whose level-L clawbacks dated at or before as_of left
-- points outstanding (unrecovered − recovered > 0), numbered in batches in user_id order. A run for a
-- past as-of never recovers a clawback dated after it. In a dry run, whose batches were undone,
-- dry_run_effects holds what they would have left unrecovered and credited.
CREATE TEMP TABLE recovery_plan AS
SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1) / :batch_size AS batch
FROM (
    SELECT beneficiary_user_id AS user_id
    FROM public.referral_rewards
    WHERE level = :level
      AND unrecovered_points > recovered_points
      AND clawed_back_at <= :as_of
    UNION
    SELECT user_id FROM pg_temp.dry_run_effects WHERE unrecovered > 0
) AS owed;

-- name: dry_run_effects --
CREATE TEMP TABLE dry_run_effects (user_id uuid NOT NULL, delta bigint NOT NULL, unrecovered bigint NOT NULL);

-- name: batch_effects --
-- In a dry run, before its batch is undone: what the batch did to each beneficiary (points written,
-- points left unrecovered), kept for the recovery's reckoning.
SELECT p.user_id,
       coalesce(sum(t.delta), 0) AS delta,
       coalesce(sum(p.points + p.delta - p.expired_points) FILTER (WHERE p.action = 'clawback'), 0) AS unrecovered
FROM planned_rows AS p
LEFT JOIN public.user_point_transactions AS t
       ON t.idempotency_key = p.idempotency_key AND t.user_id IS NOT DISTINCT FROM p.user_id  -- as record_rewards
GROUP BY p.user_id;

-- name: keep_batch_effects --
INSERT INTO pg_temp.dry_run_effects (user_id, delta, unrecovered)
SELECT CAST(e.user_id AS uuid), e.delta, e.unrecovered
FROM jsonb_to_recordset(CAST(:effects AS jsonb)) AS e(user_id text, delta bigint, unrecovered bigint);

-- name: recovery_plan_size --
SELECT count(*) AS beneficiaries, coalesce(max(batch) + 1, 0) AS batches FROM pg_temp.recovery_plan;

-- name: recovery_batch_users --
SELECT user_id FROM pg_temp.recovery_plan WHERE batch = :batch ORDER BY user_id;

-- name: recovery_rows --
-- Under the balance locks: for each of the batch's beneficiaries with a balance above 0, one
-- REFERRAL_CLAWBACK of min(outstanding, balance), key recover:{user}:{as_of}:{level} (with :{n},
-- n = 2, 3, … when rows of that key exist already: a re-run of the same as-of after a back-fill).
CREATE TEMP TABLE recovery_rows ON COMMIT DROP AS
WITH outstanding AS (
    SELECT user_id, sum(points) AS points
    FROM (SELECT beneficiary_user_id AS user_id, unrecovered_points - recovered_points AS points
          FROM public.referral_rewards
          WHERE level = :level
            AND unrecovered_points > recovered_points
            AND clawed_back_at <= :as_of
            AND beneficiary_user_id = ANY(CAST(:user_ids AS uuid[]))
          UNION ALL
          SELECT user_id, unrecovered FROM pg_temp.dry_run_effects
          WHERE user_id = ANY(CAST(:user_ids AS uuid[]))) AS owed
    GROUP BY user_id
),
ledger AS (
    SELECT t.user_id, sum(t.delta) AS points,
           count(*) FILTER (WHERE t.idempotency_key = format('recover:%s:%s:%s', t.user_id, CAST(:as_of_key AS text), :level)
                               OR starts_with(t.idempotency_key,
                                              format('recover:%s:%s:%s:', t.user_id, CAST(:as_of_key AS text), :level)))
             AS earlier
    FROM public.user_point_transactions AS t
    WHERE t.user_id = ANY(CAST(:user_ids AS uuid[]))
    GROUP BY t.user_id
),
balance AS (
    SELECT user_id, sum(points) AS points, sum(earlier) AS earlier
    FROM (SELECT user_id, points, earlier FROM ledger
          UNION ALL
          SELECT user_id, delta, 0 FROM pg_temp.dry_run_effects
          WHERE user_id = ANY(CAST(:user_ids AS uuid[]))) AS moved
    GROUP BY user_id
)
SELECT o.user_id,
       -least(o.points, b.points) AS delta,
       'REFERRAL_CLAWBACK' AS type,
       CAST(NULL AS uuid) AS ref_id,
       format('recover:%s:%s:%s', o.user_id, CAST(:as_of_key AS text), :level)
         || CASE WHEN b.earlier > 0 THEN ':' || (b.earlier + 1) ELSE '' END AS idempotency_key,
       format('recovery of %s unrecovered %s points of earlier clawbacks', least(o.points, b.points),
              CAST(:note_label AS text)) AS note
FROM outstanding AS o
JOIN balance AS b ON b.user_id = o.user_id
WHERE o.points > 0 AND b.points > 0;

-- name: recovery_candidates --
-- (A fragment: the candidates of the ledger writer.)
SELECT user_id, delta, type, ref_id, idempotency_key, note FROM recovery_rows

-- name: attribute_recoveries --
-- The recoveries now in the ledger, attributed to the oldest outstanding clawbacks first (by the
-- clawback's as-of, then the reward's key). Gathered first, as in record_clawbacks (Citus).
WITH recovered AS MATERIALIZED (
    SELECT r.user_id, -r.delta AS points
    FROM recovery_rows AS r
    WHERE r.idempotency_key IN (SELECT t.idempotency_key
                                FROM public.user_point_transactions AS t
                                WHERE t.user_id IN (SELECT user_id FROM recovery_rows)
                                  AND t.idempotency_key IN (SELECT idempotency_key FROM recovery_rows))
),
owed AS MATERIALIZED (
    SELECT rr.idempotency_key, rr.beneficiary_user_id AS user_id, rr.unrecovered_points - rr.recovered_points AS open,
           sum(rr.unrecovered_points - rr.recovered_points)
             OVER (PARTITION BY rr.beneficiary_user_id ORDER BY rr.clawed_back_at, rr.idempotency_key) AS open_end
    FROM public.referral_rewards AS rr
    WHERE rr.level = :level
      AND rr.unrecovered_points > rr.recovered_points
      AND rr.clawed_back_at <= :as_of
      AND rr.beneficiary_user_id IN (SELECT user_id FROM recovered)
),
share AS MATERIALIZED (
    SELECT o.idempotency_key, least(o.open, r.points - (o.open_end - o.open)) AS points
    FROM owed AS o
    JOIN recovered AS r ON r.user_id = o.user_id
    WHERE r.points > o.open_end - o.open
),
updated AS (
    UPDATE public.referral_rewards AS rr
    SET recovered_points = rr.recovered_points + share.points
    FROM share
    WHERE rr.idempotency_key = share.idempotency_key
    RETURNING share.points
)
SELECT count(*) AS clawbacks, coalesce(sum(points), 0) AS points FROM updated;

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

-- name: feed_is_clean --
-- True when the feed is a table whose constraints already make every row usable (migration 012's NOT
-- NULLs and CHECKs, and a unique index on id alone): then the plan reads it as it is. Any other feed
-- (a view, or the table on Citus, unique on (user_id, id)) is read through usable_feed.
SELECT c.relkind IN ('r', 'p')
       AND (SELECT count(*) FROM pg_attribute AS a
            WHERE a.attrelid = c.oid AND a.attnotnull AND NOT a.attisdropped
              AND a.attname IN ('id', 'user_id', 'amount_cents', 'status', 'paid_at')) = 5
       AND EXISTS (SELECT 1 FROM pg_index AS i
                   JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = c.oid AND i.indisunique AND i.indnkeyatts = 1 AND a.attname = 'id')
       AND EXISTS (SELECT 1 FROM pg_constraint AS k
                   WHERE k.conrelid = c.oid AND k.contype = 'c'
                     AND pg_get_constraintdef(k.oid) LIKE '%amount_cents >= 0%')
       AND EXISTS (SELECT 1 FROM pg_constraint AS k
                   WHERE k.conrelid = c.oid AND k.contype = 'c'
                     AND pg_get_constraintdef(k.oid) LIKE '%status%PAID%REFUNDED%FAILED%')
FROM pg_class AS c
WHERE c.oid = to_regclass(:feed);

-- name: usable_feed --
-- (A fragment, in place of the feed in plan_run.) The rows a run can use: every column set, a known
-- status, an amount of at least 0, and an id no other row has.
(SELECT f.id, f.user_id, f.amount_cents, f.status, f.paid_at
 FROM {feed} AS f
 WHERE f.id IS NOT NULL AND f.user_id IS NOT NULL AND f.paid_at IS NOT NULL
   AND f.amount_cents >= 0 AND f.status IN ('PAID', 'REFUNDED', 'FAILED')
   AND f.id NOT IN (SELECT d.id FROM {feed} AS d WHERE d.id IS NOT NULL GROUP BY d.id HAVING count(*) > 1))

-- name: skipped_feed_rows --
-- The rows of the feed a run cannot use, with why (their ids are logged).
SELECT CAST(f.id AS text) AS payment_id,
       CASE WHEN f.id IS NULL THEN 'no id'
            WHEN f.user_id IS NULL THEN 'no user_id'
            WHEN f.paid_at IS NULL THEN 'no paid_at'
            WHEN f.amount_cents IS NULL THEN 'no amount_cents'
            WHEN f.amount_cents < 0 THEN 'a negative amount_cents'
            WHEN f.status IS NULL OR f.status NOT IN ('PAID', 'REFUNDED', 'FAILED') THEN 'an unknown status'
            ELSE 'an id seen twice'
       END AS reason
FROM {feed} AS f
WHERE f.id IS NULL OR f.user_id IS NULL OR f.paid_at IS NULL OR f.amount_cents IS NULL
   OR f.amount_cents < 0 OR f.status IS NULL OR f.status NOT IN ('PAID', 'REFUNDED', 'FAILED')
   OR f.id IN (SELECT d.id FROM {feed} AS d WHERE d.id IS NOT NULL GROUP BY d.id HAVING count(*) > 1)
ORDER BY 1;
