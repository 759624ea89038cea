-- The bounds: each job's whole work as ONE set-based statement, written straight from SPEC.md's rules
-- (not from the jobs' code), run in one transaction and rolled back by bench/run.py. A job can hardly
-- be faster than its bound: same database, same data, no batches, no round trips.
-- Each block is named after its job (dashes as underscores) and returns one row: `rows` (what it
-- changed or found) and `points`. `{payments}` is the validated, quoted REWARDS_PAYMENTS_TABLE.
-- Writes go the SPEC's one way: ledger rows ON CONFLICT DO NOTHING (no target, as core/ledger.sql: the
-- key's unique index, which on Citus is (user_id, idempotency_key)), and the cache moved by exactly the
-- inserted rows, balance rows touched in user_id order.
-- The statements run on both engines, one server and a Citus cluster (through the coordinator): the
-- anti-joins are LEFT JOIN … IS NULL, as Citus refuses a correlated subquery beside a CTE.
-- Month k of a payment is found once per payment (not once per month and payment): with k0 the
-- calendar-month distance from rewarded_at to paid_at, k = k0, or k0 - 1 when rewarded_at + k0 months
-- lies after paid_at (month arithmetic only clamps days down, so one step back is always enough).

-- name: expire_pending --
WITH expired AS (
    UPDATE public.user_referral_relationships
       SET status = 'EXPIRED', expired_at = :as_of
     WHERE status = 'PENDING'
       AND created_at <= CAST(:as_of AS timestamptz) - make_interval(days => :pending_expiry_days)
    RETURNING 1
)
SELECT count(*) AS rows, 0 AS points FROM expired;

-- name: reward_rule --
-- Both reward jobs' rule (SPEC v3 "recurring-rewards", "level2-rewards", "Holds, refunds and clawbacks";
-- docs/rules.md), :level 1 or 2, over the whole history at once, less what this level already holds:
-- the first run's bound and the exact daily bound are the same statement (on the first run nothing is
-- written yet).
--   beneficiary: level 1, r's referrer; level 2, the referrer A of B's own level-1 ACTIVE/REWARDED
--     relationship (r level 1, B = r's referrer), or r's referrer (r level 2); never C, nor B via a parent;
--   owed: each paid month (referred user, k), k in :first_month .. :last_month, with its basis, the
--     earliest PAID payment (paid_at, id) with paid_at <= as_of - hold days;
--   clawback: a standing reward dated at or before as_of whose basis no longer holds (not in the feed,
--     not PAID, another amount, or out of its month under the referred user's current rewarded_at), or a
--     second holding reward of its month, taking min(its points not yet expired (the overlap of its lot
--     with the EXPIRY rows of the beneficiary's FIFO stack), the balance less this run's earlier
--     clawbacks, in key order);
--   reward: an owed month without a standing reward after the clawbacks; key <prefix>:<id>:<k>, or
--     <prefix>:<id>:<k>:<payment> when the month was rewarded before;
--   recovery: each beneficiary's outstanding unrecovered points (dated at or before as_of, this run's
--     clawbacks included) up to the balance after this run's rows;
-- then the ledger rows, the cache moved by the inserted rows (user_id order), and referral_rewards
-- with the basis columns.
WITH relationship AS (
    SELECT r.id, r.referred_user_id, r.referrer_user_id, r.rewarded_at,
           (:level = 2 AND r.level = 1) AS via_parent,
           CASE WHEN :level = 1 OR r.level = 2 THEN r.referrer_user_id ELSE parent.referrer_user_id END
             AS beneficiary_user_id
    FROM public.user_referral_relationships r
    LEFT JOIN public.user_referral_relationships parent
           ON :level = 2 AND r.level = 1 AND parent.referred_user_id = r.referrer_user_id
          AND parent.level = 1 AND parent.status IN ('ACTIVE', 'REWARDED')
    WHERE r.status = 'REWARDED' AND r.rewarded_at IS NOT NULL AND (:level = 2 OR r.level = 1)
),
eligible AS (
    SELECT * FROM relationship
    WHERE beneficiary_user_id IS NOT NULL AND beneficiary_user_id <> referred_user_id
      AND NOT (via_parent AND beneficiary_user_id = referrer_user_id)
),
payment_month AS (
    SELECT r.id, r.referred_user_id, r.beneficiary_user_id, r.rewarded_at, p.id AS payment_id, p.paid_at,
           p.amount_cents,
           (extract(year FROM p.paid_at) - extract(year FROM r.rewarded_at)) * 12
           + extract(month FROM p.paid_at) - extract(month FROM r.rewarded_at) AS k0
    FROM eligible r
    JOIN {payments} p ON p.user_id = r.referred_user_id
    WHERE p.status = 'PAID' AND p.paid_at >= r.rewarded_at AND p.paid_at <= :counts_until
),
basis AS (
    SELECT DISTINCT ON (referred_user_id, k) id, referred_user_id, k, beneficiary_user_id, payment_id, paid_at,
           amount_cents
    FROM (SELECT pm.*, CASE WHEN pm.rewarded_at + make_interval(months => pm.k0::int) > pm.paid_at
                            THEN pm.k0::int - 1 ELSE pm.k0::int END AS k
          FROM payment_month pm) AS m
    WHERE k BETWEEN :first_month AND :last_month
    ORDER BY referred_user_id, k, paid_at, payment_id
),
written AS (
    SELECT * FROM public.referral_rewards WHERE level = :level
),
judged AS (
    SELECT w.*,
           p.id IS NOT NULL AND p.status = 'PAID' AND p.amount_cents = w.basis_amount_cents
           AND (g.rewarded_at IS NULL OR (p.paid_at >= g.rewarded_at + make_interval(months => w.month)
                                          AND p.paid_at < g.rewarded_at + make_interval(months => w.month + 1)))
             AS holds
    FROM written w
    LEFT JOIN {payments} p ON p.id = w.payment_id
    LEFT JOIN public.user_referral_relationships g ON g.referred_user_id = w.referred_user_id
    WHERE w.clawback_key IS NULL
),
ranked AS (
    SELECT j.*, row_number() OVER (PARTITION BY referred_user_id, month, holds ORDER BY rewarded_at, idempotency_key)
                  AS holding_rank
    FROM judged j
),
clawback AS (
    SELECT r.*, 'clawback:' || r.idempotency_key AS clawback_key_new
    FROM ranked r
    WHERE r.rewarded_at <= :as_of AND (NOT r.holds OR r.holding_rank > 1)
),
standing AS (
    SELECT r.referred_user_id, r.month FROM ranked r
    WHERE NOT (r.rewarded_at <= :as_of AND (NOT r.holds OR r.holding_rank > 1))
),
reward AS (
    SELECT b.beneficiary_user_id AS user_id, b.id AS relationship_id, b.referred_user_id, b.k, b.payment_id,
           b.paid_at, b.amount_cents,
           CAST(:fixed_points AS numeric)
           + div(b.amount_cents * CAST(:percent AS numeric) * CAST(:points_per_usd AS numeric), 10000) AS points,
           CASE WHEN rewarded.month IS NOT NULL
                THEN format('%s:%s:%s:%s', CAST(:key_prefix AS text), b.id, b.k, b.payment_id)
                ELSE format('%s:%s:%s', CAST(:key_prefix AS text), b.id, b.k) END AS idempotency_key
    FROM basis b
    LEFT JOIN (SELECT DISTINCT relationship_id, month FROM written) rewarded
           ON rewarded.relationship_id = b.id AND rewarded.month = b.k
    LEFT JOIN (SELECT DISTINCT referred_user_id, month FROM standing) s
           ON s.referred_user_id = b.referred_user_id AND s.month = b.k
    WHERE s.referred_user_id IS NULL
),
clawback_ledger AS (
    SELECT t.* FROM public.user_point_transactions t
    WHERE t.user_id IN (SELECT beneficiary_user_id FROM clawback)
),
balance AS (
    SELECT user_id, sum(delta) AS points FROM clawback_ledger GROUP BY user_id
),
lot AS (
    SELECT l.user_id, l.idempotency_key, l.delta + coalesce(o.delta, 0) AS size,
           sum(l.delta + coalesce(o.delta, 0)) OVER (PARTITION BY l.user_id ORDER BY l.created_at, l.id) AS lot_end
    FROM clawback_ledger l
    LEFT JOIN clawback_ledger o ON o.user_id = l.user_id AND o.idempotency_key = 'clawback:' || l.idempotency_key
    WHERE l.delta > 0
),
own_clawback AS (
    SELECT c.user_id, c.idempotency_key
    FROM clawback_ledger c
    JOIN clawback_ledger r ON r.user_id = c.user_id AND c.idempotency_key = 'clawback:' || r.idempotency_key
    WHERE c.delta < 0 AND r.delta > 0
),
debit AS (
    SELECT d.user_id, d.type, -d.delta AS size,
           sum(-d.delta) OVER (PARTITION BY d.user_id ORDER BY d.created_at, d.id) AS debit_end
    FROM clawback_ledger d
    LEFT JOIN own_clawback o ON o.user_id = d.user_id AND o.idempotency_key = d.idempotency_key
    WHERE d.delta < 0 AND o.user_id IS NULL
),
expired AS (
    SELECT c.idempotency_key,
           least(c.points, sum(greatest(0, least(l.lot_end, d.debit_end) - greatest(l.lot_end - l.size, d.debit_end - d.size))))
             AS points
    FROM clawback c
    JOIN lot l ON l.user_id = c.beneficiary_user_id AND l.idempotency_key = c.idempotency_key
    JOIN debit d ON d.user_id = l.user_id AND d.type = 'EXPIRY'
    GROUP BY c.idempotency_key, c.points
),
priced AS (
    SELECT c.*, coalesce(e.points, 0) AS expired,
           least(c.points - coalesce(e.points, 0),
                 greatest(0, coalesce(b.points, 0)
                             - (sum(c.points - coalesce(e.points, 0)) OVER (PARTITION BY c.beneficiary_user_id
                                                                           ORDER BY c.clawback_key_new)
                                - (c.points - coalesce(e.points, 0))))) AS taken
    FROM clawback c
    LEFT JOIN expired e ON e.idempotency_key = c.idempotency_key
    LEFT JOIN balance b ON b.user_id = c.beneficiary_user_id
),
credit_and_clawback AS (
    SELECT user_id, CAST(points AS int) AS delta, CAST(:ledger_type AS text) AS type, relationship_id AS ref_id,
           idempotency_key
    FROM reward WHERE points >= 1 AND points <= 2147483647
    UNION ALL
    SELECT beneficiary_user_id, CAST(-taken AS int), 'REFERRAL_CLAWBACK', relationship_id, clawback_key_new
    FROM priced WHERE taken > 0
),
outstanding AS (
    SELECT user_id, sum(points) AS points
    FROM (SELECT beneficiary_user_id AS user_id, unrecovered_points - recovered_points AS points
          FROM public.referral_rewards
          WHERE level = :level AND unrecovered_points > recovered_points AND clawed_back_at <= :as_of
          UNION ALL
          SELECT beneficiary_user_id, points - expired - taken FROM priced) AS owed
    GROUP BY user_id
    HAVING sum(points) > 0
),
recovery AS (
    SELECT o.user_id, least(o.points, b.points) AS points
    FROM outstanding o
    JOIN (SELECT t.user_id, sum(t.delta) AS points
          FROM (SELECT user_id, delta FROM public.user_point_transactions
                WHERE user_id IN (SELECT user_id FROM outstanding)
                UNION ALL
                SELECT user_id, delta FROM credit_and_clawback) t
          GROUP BY t.user_id) b ON b.user_id = o.user_id
    WHERE b.points > 0
),
ledger_row AS (
    SELECT * FROM credit_and_clawback
    UNION ALL
    SELECT user_id, CAST(-points AS int), 'REFERRAL_CLAWBACK', NULL,
           format('recover:%s:%s:%s', user_id, CAST(:as_of AS text), :level)
    FROM recovery
),
inserted AS (
    INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)
    SELECT user_id, delta, type, ref_id, idempotency_key, :as_of FROM ledger_row
    ON CONFLICT DO NOTHING  -- the key's unique index, (idempotency_key) or on Citus (user_id, idempotency_key)
    RETURNING user_id, delta, idempotency_key
),
cache AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, sum(delta), sum(greatest(delta, 0)), sum(least(delta, 0)), :as_of
    FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance = b.balance + excluded.balance, total_earned = b.total_earned + excluded.total_earned,
           total_spent = b.total_spent + excluded.total_spent, updated_at = excluded.updated_at
    RETURNING 1
),
clawed AS (
    UPDATE public.referral_rewards rr
       SET clawback_key = p.clawback_key_new, clawed_back_points = p.taken, expired_points = p.expired,
           unrecovered_points = p.points - p.taken - p.expired, clawed_back_at = :as_of
      FROM priced p
     WHERE rr.idempotency_key = p.idempotency_key
    RETURNING 1
),
recorded AS (
    -- after the clawbacks (the InitPlan runs first): a re-earned month's reward then stands alone
    INSERT INTO public.referral_rewards
           (idempotency_key, relationship_id, referred_user_id, level, month, payment_id, basis_paid_at,
            basis_amount_cents, beneficiary_user_id, points, rewarded_at)
    SELECT r.idempotency_key, r.relationship_id, r.referred_user_id, :level, r.k, r.payment_id, r.paid_at,
           r.amount_cents, r.user_id, CAST(r.points AS bigint), :as_of
    FROM reward r
    JOIN inserted i ON i.idempotency_key = r.idempotency_key
    WHERE (SELECT count(*) FROM clawed) >= 0
    RETURNING 1
)
SELECT count(*) AS rows, coalesce(sum(delta), 0) AS points,
       (SELECT count(*) FROM cache) AS users, (SELECT count(*) FROM recorded) AS recorded
FROM inserted;

-- name: expire_points --
-- due = (lots created before as_of - N months, a reward's lot less its own clawback)
--       - (|negative deltas| other than own clawbacks) (docs/rules.md "Expiry: lots").
WITH ledger AS (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < CAST(:as_of AS timestamptz)
                                                                  - make_interval(months => :expiry_months)), 0)
           + coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS due
    FROM public.user_point_transactions
    GROUP BY user_id
),
young_clawbacks AS (
    SELECT beneficiary_user_id AS user_id, sum(clawed_back_points) AS points
    FROM public.referral_rewards
    WHERE clawed_back_points > 0
      AND rewarded_at >= CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)
    GROUP BY beneficiary_user_id
),
per_user AS (
    SELECT l.user_id, l.due + coalesce(y.points, 0) AS due
    FROM ledger l LEFT JOIN young_clawbacks y ON y.user_id = l.user_id
),
inserted AS (
    INSERT INTO public.user_point_transactions (user_id, delta, type, ref_id, idempotency_key, created_at)
    SELECT user_id, CAST(-due AS int), 'EXPIRY', NULL, 'expiry:' || user_id || ':' || CAST(:as_of_key AS text), :as_of
    FROM per_user
    WHERE due > 0
    ON CONFLICT DO NOTHING  -- the key's unique index, (idempotency_key) or on Citus (user_id, idempotency_key)
    RETURNING user_id, delta
),
cache AS (
    INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent, updated_at)
    SELECT user_id, sum(delta), sum(greatest(delta, 0)), sum(least(delta, 0)), :as_of
    FROM inserted GROUP BY user_id ORDER BY user_id
    ON CONFLICT (user_id) DO UPDATE
       SET balance = b.balance + excluded.balance, total_earned = b.total_earned + excluded.total_earned,
           total_spent = b.total_spent + excluded.total_spent, updated_at = excluded.updated_at
    RETURNING 1
)
SELECT count(*) AS rows, coalesce(sum(delta), 0) AS points, (SELECT count(*) FROM cache) AS users FROM inserted;

-- name: reconcile --
-- The one aggregate query: every user's ledger sums against the cache row, the discrepant users counted;
-- and the roll-forward's movements, the ledger by type and calendar month (SPEC: the opening, each
-- type's movements and the closing, month by month).
WITH movements AS (
    SELECT type, date_trunc('month', created_at) AS month, sum(delta) AS points, count(*) AS rows
    FROM public.user_point_transactions
    WHERE created_at <= :as_of
    GROUP BY type, date_trunc('month', created_at)
),
ledger AS (
    SELECT user_id, sum(delta) AS balance,
           coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS earned,
           coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS spent
    FROM public.user_point_transactions
    GROUP BY user_id
),
compared AS (
    SELECT l.user_id IS NOT NULL AS in_ledger, b.user_id IS NOT NULL AS in_cache,
           b.balance, b.total_earned, b.total_spent,
           coalesce(l.balance, 0) AS ledger_balance, coalesce(l.earned, 0) AS ledger_earned,
           coalesce(l.spent, 0) AS ledger_spent
    FROM ledger l
    FULL JOIN public.user_point_balances b ON b.user_id = l.user_id
)
SELECT count(*) FILTER (WHERE (in_ledger AND NOT in_cache)
                           OR (in_cache AND NOT in_ledger AND (balance <> 0 OR total_earned <> 0 OR total_spent <> 0))
                           OR (in_ledger AND in_cache AND (balance, total_earned, total_spent)
                                                          <> (ledger_balance, ledger_earned, ledger_spent))
                           OR (in_cache AND balance <> total_earned + total_spent)
                           OR ledger_balance < 0) AS rows,
       coalesce(sum(ledger_balance), 0) AS points,
       count(*) AS users,
       (SELECT count(*) FROM movements) AS movement_lines
FROM compared;

-- name: expiring_soon --
-- The bound of expiring-soon: one pass over the ledger grouped by user (E(as_of), D, the points
-- crossing a cutoff in the 30-day window), as jobs/expiring_soon.sql's first step does, with lots as
-- the rules count them (docs/rules.md "Expiry: lots"): a reward's lot less its own clawback, which is
-- no debit. Net of those clawbacks (referral_rewards.clawed_back_points, by the reward's rewarded_at),
-- a user has points crossing when crossing - own clawbacks of the window's lots > 0, and some expire
-- when earned_before + that > debited - own clawbacks of the lots from the window on (those before it
-- cancel out of both sides).
WITH per_user AS (
    SELECT user_id,
           coalesce(sum(delta) FILTER (WHERE delta > 0 AND created_at < CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)), 0) AS earned_before,
           coalesce(-sum(delta) FILTER (WHERE delta < 0), 0) AS debited,
           coalesce(sum(delta) FILTER (WHERE delta > 0
                                         AND created_at >= CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)
                                         AND created_at < CAST(:as_of AS timestamptz) + interval '30 days' - make_interval(months => :expiry_months)), 0) AS crossing
    FROM public.user_point_transactions
    GROUP BY user_id
),
own_clawbacks AS (
    SELECT beneficiary_user_id AS user_id,
           coalesce(sum(clawed_back_points) FILTER (
               WHERE rewarded_at < CAST(:as_of AS timestamptz) + interval '30 days' - make_interval(months => :expiry_months)), 0)
             AS window_points,
           sum(clawed_back_points) AS young_points  -- the window's lots and later ones
    FROM public.referral_rewards
    WHERE clawed_back_points > 0
      AND rewarded_at >= CAST(:as_of AS timestamptz) - make_interval(months => :expiry_months)
    GROUP BY beneficiary_user_id
)
SELECT count(*) AS rows, coalesce(sum(crossing), 0) AS points, count(*) AS users
FROM (
    SELECT p.user_id, p.crossing - coalesce(c.window_points, 0) AS crossing, p.earned_before,
           p.debited - coalesce(c.young_points, 0) AS debited
    FROM per_user p
    LEFT JOIN own_clawbacks c ON c.user_id = p.user_id
) AS net
WHERE crossing > 0 AND earned_before + crossing > debited;
