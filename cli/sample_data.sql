-- Sample data: a deterministic world of users, referrals, payments and points (see sample_data.py).
-- Every random choice is pg_temp.rnd(seed, stream, n): a hash of the entity's number, so the same seed
-- gives the same rows, whatever the server's parallelism or the order rows are produced in.
-- Parameters: :seed, :users (N), :n_max (users up to the last window's end), :anchor_epoch (the
-- generation's as-of, epoch seconds), :span_seconds (the years before it), :since / :until (the window
-- of event times loaded), and the world's shape: its distributions, the parameters of plan_users,
-- plan_relationships and insert_payments (sample_data.py's SHAPES, the demo's; bench/random_world.py
-- passes a shape drawn per seed).

-- name: create_rnd --
-- A uniform number in [0, 1) from (seed, stream, n); SQL and IMMUTABLE so the planner inlines it.
CREATE OR REPLACE FUNCTION pg_temp.rnd(seed bigint, stream int, n bigint) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (hashint8extended(n, seed * 1000 + stream) & 9007199254740991)::float8 / 9007199254740992.0 $$;

-- name: create_uid --
-- A stable UUID for the n-th entity of a kind.
CREATE OR REPLACE FUNCTION pg_temp.uid(seed bigint, kind text, n bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT md5(seed::text || ':' || kind || ':' || n::text)::uuid $$;

-- name: plan_users --
-- Users 1..:n_max. User n signs up at anchor - span * (1 - (n/N)^(1/:signup_growth)): sign-ups grow over
-- time (2: as the square of it), user N signs up at the anchor, later numbers after it. The first 2 % and
-- :unreferred_share of the rest came on their own (so some referrers were never referred themselves).
CREATE TEMP TABLE sample_user AS
SELECT n,
       pg_temp.uid(:seed, 'user', n)                                                     AS user_id,
       upper(substr(md5(CAST(:seed AS text) || ':code:' || n::text), 1, 4)) || lpad(upper(to_hex(n)), 7, '0') AS code,
       to_timestamp(floor(:anchor_epoch - :span_seconds
                          * (1 - (n::float8 / :users) ^ (1.0 / CAST(:signup_growth AS float8))))) AS signup_at,
       (n > ceil(:users * 0.02) AND pg_temp.rnd(:seed, 1, n) >= CAST(:unreferred_share AS float8)) AS referred
FROM generate_series(1::bigint, :n_max) AS n;

-- name: plan_relationships --
-- One relationship per referred user n. Rarely the referrer is the user itself (:self_referral_share,
-- and at least :least_self_referrals / N) or its pair partner n # 1 (:cycle_share, the same least: a
-- two-user cycle); else :influencer_share go to the first :influencers users (the first of them the
-- most), :chain_share to one of the 3 users just before (long chains), the rest to an earlier user
-- n * u^:referrer_bias (1: uniform; 2: biased to early users, so trees have deep chains).
-- :level2_share are stored at level 2 with the grandparent as referrer. Plans (activation, first
-- payment, subscription length, plan price) are fixed per relationship; whether they happened depends on
-- time. A relationship is activated when its draw of stream 6 lies in [:activated_from, :activated_to)
-- (the band's width is the activated share), within :activation_days of sign-up; :rewarded_share of
-- those get their first payment within :reward_days of activation. A subscription lasts about
-- :mean_months months (exponential; at most :max_months, NULL: no cap), none at all for :no_payment_share.
CREATE TEMP TABLE sample_relationship AS
WITH pick AS (
    SELECT u.n, u.user_id, u.signup_at,
           CASE WHEN pg_temp.rnd(:seed, 2, u.n)
                     < greatest(:self_referral_share, CAST(:least_self_referrals AS numeric) / :users) THEN u.n
                WHEN pg_temp.rnd(:seed, 3, u.n / 2)
                     < greatest(:cycle_share, CAST(:least_self_referrals AS numeric) / :users) THEN u.n # 1
                WHEN pg_temp.rnd(:seed, 16, u.n) < CAST(:influencer_share AS float8)
                     THEN 1 + floor(least(CAST(:influencers AS bigint), u.n - 1)
                                    * pg_temp.rnd(:seed, 4, u.n) ^ 3)::bigint
                WHEN pg_temp.rnd(:seed, 16, u.n) < CAST(:influencer_share AS float8) + CAST(:chain_share AS float8)
                     THEN greatest(1, u.n - 1 - floor(3 * pg_temp.rnd(:seed, 4, u.n))::bigint)
                ELSE 1 + floor((u.n - 1) * pg_temp.rnd(:seed, 4, u.n) ^ CAST(:referrer_bias AS float8))::bigint
           END AS referrer_n
    FROM sample_user u
    WHERE u.referred
),
leveled AS (
    SELECT p.*,
           (p.referrer_n <> p.n AND pg_temp.rnd(:seed, 5, p.n) < CAST(:level2_share AS float8)
            AND gp.referrer_n IS NOT NULL AND gp.referrer_n NOT IN (p.n, p.referrer_n)) AS is_level2,
           gp.referrer_n AS grand_n
    FROM pick p
    LEFT JOIN pick gp ON gp.n = p.referrer_n
),
planned AS (
    SELECT l.n, l.user_id, l.signup_at, l.is_level2,
           CASE WHEN l.is_level2 THEN l.grand_n ELSE l.referrer_n END AS referrer_n,
           CASE WHEN pg_temp.rnd(:seed, 6, l.n) < CAST(:activated_from AS float8)
                  OR pg_temp.rnd(:seed, 6, l.n) >= CAST(:activated_to AS float8) THEN NULL
                ELSE date_trunc('second', l.signup_at + interval '5 minutes'
                                          + pg_temp.rnd(:seed, 7, l.n) * CAST(:activation_days AS float8)
                                            * interval '1 day') END AS activated_plan
    FROM leveled l
)
SELECT p.n,
       pg_temp.uid(:seed, 'relationship', p.n) AS id,
       r.user_id                               AS referrer_user_id,
       p.user_id                               AS referred_user_id,
       r.code                                  AS referral_code,
       CASE WHEN p.is_level2 THEN 2 ELSE 1 END AS level,
       p.signup_at                             AS created_at,
       p.activated_plan,
       CASE WHEN p.activated_plan IS NULL OR pg_temp.rnd(:seed, 8, p.n) >= CAST(:rewarded_share AS float8) THEN NULL
            ELSE date_trunc('second', p.activated_plan + interval '1 hour'
                                      + pg_temp.rnd(:seed, 9, p.n) * CAST(:reward_days AS float8) * interval '1 day')
       END AS rewarded_plan,
       -- Never activated and old: expire-pending expired :expired_share of them long ago; the rest wait for it.
       CASE WHEN p.activated_plan IS NULL AND p.signup_at < to_timestamp(:anchor_epoch) - interval '120 days'
                 AND pg_temp.rnd(:seed, 10, p.n) < CAST(:expired_share AS float8)
            THEN p.signup_at + interval '91 days' END                                   AS expired_plan,
       (ARRAY[999, 1999, 2999, 4999])[1 + floor(pg_temp.rnd(:seed, 11, p.n) * 4)::int]  AS plan_cents,
       CASE WHEN pg_temp.rnd(:seed, 19, p.n) < CAST(:no_payment_share AS float8) THEN 0
            ELSE least(CAST(:max_months AS int),
                       1 + floor(-ln(1 - pg_temp.rnd(:seed, 12, p.n)) * CAST(:mean_months AS float8))::int)
       END AS subscription_months
FROM planned p
JOIN sample_user r ON r.n = p.referrer_n;

-- name: index_plans --
CREATE INDEX ON sample_user (n);
CREATE INDEX ON sample_relationship (id);
ANALYZE sample_user;
ANALYZE sample_relationship;

-- name: insert_codes --
-- Every user who signed up in the window gets a referral code.
INSERT INTO public.user_referral_codes (user_id, code, click_count, created_at)
SELECT user_id, code, floor(pg_temp.rnd(:seed, 30, n) * 60)::int, signup_at
FROM sample_user
WHERE signup_at > :since AND signup_at <= :until;

-- name: insert_relationships --
-- Relationships created in the window, in their state at :until.
INSERT INTO public.user_referral_relationships
       (id, referrer_user_id, referred_user_id, referral_code, level, status,
        activated_at, rewarded_at, expired_at, created_at)
SELECT id, referrer_user_id, referred_user_id, referral_code, level,
       CASE WHEN rewarded_plan <= :until THEN 'REWARDED'
            WHEN activated_plan <= :until THEN 'ACTIVE'
            WHEN expired_plan <= :until THEN 'EXPIRED'
            ELSE 'PENDING' END,
       CASE WHEN activated_plan <= :until THEN activated_plan END,
       CASE WHEN rewarded_plan <= :until THEN rewarded_plan END,
       CASE WHEN expired_plan <= :until THEN expired_plan END,
       created_at
FROM sample_relationship
WHERE created_at > :since AND created_at <= :until;

-- name: advance_relationships --
-- What the app did in the window to relationships created before it: activations and first payments.
UPDATE public.user_referral_relationships AS r
   SET status       = CASE WHEN p.rewarded_plan <= :until THEN 'REWARDED' ELSE 'ACTIVE' END,
       activated_at = p.activated_plan,
       rewarded_at  = CASE WHEN p.rewarded_plan <= :until THEN p.rewarded_plan END
  FROM sample_relationship p
 WHERE r.id = p.id
   AND p.created_at <= :since
   AND ((p.activated_plan > :since AND p.activated_plan <= :until)
        OR (p.rewarded_plan > :since AND p.rewarded_plan <= :until));

-- name: insert_payments --
-- Monthly subscription payments of rewarded referred users, from the first payment (rewarded_at, month 0)
-- for `subscription_months` months, a few days into each month; :late_share of the later ones paid up to
-- :late_max_days late (into a later month: a month paid twice, another not at all). After month 0:
-- :failure_rate FAILED (:retry_rate of those retried and PAID two days later), :refund_rate REFUNDED, the
-- rest PAID; besides, 0..:topups_max usage top-ups a month, PAID, a quarter of the plan each, on any day.
INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at, created_at, updated_at)
SELECT CASE WHEN a.attempt < 2 THEN pg_temp.uid(:seed, 'payment', r.n * 1000 + m.k * 2 + a.attempt)
            ELSE pg_temp.uid(:seed, 'topup', (r.n * 1000 + m.k) * 4 + a.attempt - 2) END,
       r.referred_user_id,
       CASE WHEN a.status = 'TOPUP' THEN r.plan_cents / 4 ELSE r.plan_cents END,
       CASE WHEN a.status = 'TOPUP' THEN 'PAID' ELSE a.status END,
       a.paid_at, a.paid_at, a.paid_at  -- recorded when paid (so the same seed gives the same rows)
FROM sample_relationship r
CROSS JOIN LATERAL generate_series(0, r.subscription_months - 1) AS m(k)
CROSS JOIN LATERAL (
    SELECT date_trunc('second', r.rewarded_plan + m.k * interval '1 month'
                      + CASE WHEN m.k = 0 THEN interval '0'
                             ELSE pg_temp.rnd(:seed, 13, r.n * 1000 + m.k) * interval '4 days'
                                  + CASE WHEN pg_temp.rnd(:seed, 28, r.n * 1000 + m.k) < CAST(:late_share AS float8)
                                         THEN pg_temp.rnd(:seed, 29, r.n * 1000 + m.k)
                                              * CAST(:late_max_days AS float8) * interval '1 day'
                                         ELSE interval '0' END END
           ) AS due_at,
           pg_temp.rnd(:seed, 14, r.n * 1000 + m.k) AS outcome,
           pg_temp.rnd(:seed, 15, r.n * 1000 + m.k) AS retry
) AS month
CROSS JOIN LATERAL (
    SELECT 0 AS attempt,
           CASE WHEN m.k = 0 OR month.outcome >= CAST(:failure_rate AS float8) + CAST(:refund_rate AS float8)
                THEN 'PAID'
                WHEN month.outcome < CAST(:failure_rate AS float8) THEN 'FAILED'
                ELSE 'REFUNDED' END AS status,
           month.due_at AS paid_at
    UNION ALL
    SELECT 1, 'PAID', month.due_at + interval '2 days'
    WHERE m.k > 0 AND month.outcome < CAST(:failure_rate AS float8) AND month.retry < CAST(:retry_rate AS float8)
    UNION ALL
    SELECT 2 + j, 'TOPUP', date_trunc('second', r.rewarded_plan + m.k * interval '1 month'
                                      + pg_temp.rnd(:seed, 17, (r.n * 1000 + m.k) * 4 + j) * interval '27 days')
    FROM generate_series(0, floor(pg_temp.rnd(:seed, 18, r.n * 1000 + m.k)
                                  * (CAST(:topups_max AS int) + 1))::int - 1) AS j
) AS a
WHERE r.rewarded_plan IS NOT NULL
  AND r.rewarded_plan + m.k * interval '1 month' <= :until
  AND a.paid_at > :since AND a.paid_at <= :until;

-- name: app_points --
-- The app's points over the years, as candidates for core.ledger's writer (`write_points` with
-- `own_dates`): the rows the app writes in production, each dated when the app wrote it and without an
-- idempotency key; the writer inserts them and moves the balance cache by exactly those rows, in the
-- same statement, as it does for the jobs' rows. Earnings: REFERRAL_FIRST_PAYMENT (1000, the referrer,
-- at the first payment), REFERRAL_WELCOME (200, the referred user, at activation), ADMIN_GRANT (1 % of
-- users, 100..5000). Each earning is then partly spent, never more than it brought: 20-60 % of it in
-- redemptions of about 17 points (each 0.5-1.5x the mean, so at most 90 %), and 3 % of earnings get an
-- ADMIN_GRANT correction of -10 %. Spending comes after its earning, so no balance ever goes below zero.
-- The kept placeholder is all_rows for the first load, or `affordable_rows` when adding to a ledger
-- where jobs may have expired points meanwhile.
WITH earning AS (
    SELECT 1 AS kind, r.n, r.referrer_user_id AS user_id, 1000 AS points, r.rewarded_plan AS at,
           r.id AS ref_id, 'REFERRAL_FIRST_PAYMENT' AS type
    FROM sample_relationship r
    WHERE r.rewarded_plan IS NOT NULL AND r.referrer_user_id <> r.referred_user_id
    UNION ALL
    SELECT 2, r.n, r.referred_user_id, 200, r.activated_plan, r.id, 'REFERRAL_WELCOME'
    FROM sample_relationship r
    WHERE r.activated_plan IS NOT NULL
    UNION ALL
    SELECT 3, u.n, u.user_id, 100 * (1 + floor(pg_temp.rnd(:seed, 20, u.n) * 50))::int,
           date_trunc('second', u.signup_at + pg_temp.rnd(:seed, 21, u.n) * interval '365 days'),
           NULL, 'ADMIN_GRANT'
    FROM sample_user u
    WHERE pg_temp.rnd(:seed, 22, u.n) < 0.01
),
keyed AS (
    SELECT e.*, (e.n * 4 + e.kind) * 1000 AS key,
           e.points * (0.2 + 0.4 * pg_temp.rnd(:seed, 23, e.n * 4 + e.kind)) AS to_spend
    FROM earning e
),
spending AS (
    SELECT k.user_id, k.points, k.at, k.key + s.j AS key, s.j, k.to_spend,
           floor(k.to_spend / 17)::int AS redemptions
    FROM keyed k
    CROSS JOIN LATERAL generate_series(0, floor(k.to_spend / 17)::int) AS s(j)
),
app_row AS (
    SELECT key + 999 AS key, user_id, points AS delta, type, ref_id, NULL::text AS note, at
    FROM keyed
    UNION ALL
    SELECT key, user_id,
           CASE WHEN j = 0 THEN -floor(points * 0.1)::int
                ELSE -floor(to_spend / redemptions * (0.5 + pg_temp.rnd(:seed, 24, key)))::int END,
           CASE WHEN j = 0 THEN 'ADMIN_GRANT'
                WHEN pg_temp.rnd(:seed, 25, key) < 0.08 THEN 'REDEMPTION_UNLOCK'
                ELSE 'REDEMPTION_QUOTA' END,
           CASE WHEN j > 0 THEN pg_temp.uid(:seed, 'redemption', key) END,
           CASE WHEN j = 0 THEN 'correction' END,
           date_trunc('second', at + interval '1 hour'
                      + pg_temp.rnd(:seed, 26, key) * CASE WHEN j = 0 THEN interval '30 days' ELSE interval '400 days' END)
    FROM spending
    WHERE j > 0 OR pg_temp.rnd(:seed, 27, key) < 0.03
),
windowed AS (
    SELECT * FROM app_row WHERE at > :since AND at <= :until
),
kept AS (
    {kept}
)
SELECT user_id, delta, type, ref_id, CAST(NULL AS text) AS idempotency_key, note, at AS created_at
FROM kept

-- name: all_rows --
-- (A fragment of app_points.) The first load: every row of the window (no spending exceeds its earning).
SELECT * FROM windowed

-- name: affordable_rows --
-- (A fragment of app_points.) Adding to a ledger the jobs wrote to: the app refuses a redemption the
-- balance cannot pay (expire-points may have taken the points it was planned on). A debit is kept when
-- the ledger balance before the window plus the window's rows up to it, all planned debits counted,
-- stays >= 0; counting the refused ones too only refuses more, so no balance goes below zero.
SELECT *
FROM (
    SELECT w.*,
           coalesce(opening.balance, 0)
           + sum(w.delta) OVER (PARTITION BY w.user_id ORDER BY w.at, w.key ROWS UNBOUNDED PRECEDING) AS running
    FROM windowed w
    LEFT JOIN (SELECT t.user_id, sum(t.delta) AS balance
               FROM public.user_point_transactions t
               WHERE t.user_id IN (SELECT user_id FROM windowed)
               GROUP BY t.user_id) AS opening ON opening.user_id = w.user_id
) AS planned
WHERE delta > 0 OR running >= 0

-- name: drift_cache --
-- A little drift for reconcile to find, on the users first in a seeded order: one user's cache row is
-- missing, one has a balance off (cache inconsistent too), one total_earned off, the rest balance and
-- total_earned off together (consistent cache, wrong numbers); plus one orphan cache row.
WITH chosen AS (
    SELECT b.user_id, row_number() OVER (ORDER BY pg_temp.rnd(:seed, 40, u.n), u.n) AS rank
    FROM public.user_point_balances b
    JOIN sample_user u ON u.user_id = b.user_id
),
drifted AS (
    SELECT user_id, rank FROM chosen WHERE rank <= :drifted_users
),
removed AS (
    DELETE FROM public.user_point_balances b
    USING drifted d
    WHERE b.user_id = d.user_id AND d.rank = 1
    RETURNING b.user_id
),
changed AS (
    UPDATE public.user_point_balances b
       SET balance      = b.balance + CASE WHEN d.rank = 3 THEN 0 ELSE 10 * d.rank END,
           total_earned = b.total_earned + CASE WHEN d.rank = 2 THEN 0 ELSE 10 * d.rank END
      FROM drifted d
     WHERE b.user_id = d.user_id AND d.rank > 1
    RETURNING b.user_id
),
orphan AS (
    INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent, updated_at)
    VALUES (pg_temp.uid(:seed, 'orphan', 1), 120, 120, 0, :until)
    RETURNING user_id
)
SELECT (SELECT count(*) FROM removed) + (SELECT count(*) FROM changed) + (SELECT count(*) FROM orphan);

-- name: drop_plans --
DROP TABLE IF EXISTS sample_user, sample_relationship;

-- name: refund_payments --
-- Refunds that arrive after the rewards (a Timeline with refunds, the demo's year): about 2 % of PAID
-- payments are refunded 3-20 days after they were paid, when that falls in the window; billing turns
-- them REFUNDED then (the feed's trigger stamps updated_at), and the reward jobs claw their rewards back.
UPDATE public.user_subscription_payments AS p
   SET status = 'REFUNDED'
  FROM (SELECT id, paid_at + (3 + 17 * pg_temp.rnd(:seed, 51, hashtextextended(id::text, 0))) * interval '1 day'
                   AS refund_at
        FROM public.user_subscription_payments
        WHERE status = 'PAID' AND pg_temp.rnd(:seed, 50, hashtextextended(id::text, 0)) < 0.02) AS r
 WHERE p.id = r.id AND r.refund_at > :since AND r.refund_at <= :until;

-- name: drift_a_little --
-- The app's bug of the week (a Timeline with drift), about every other week: one user's credit applied
-- to the cache twice, balance and total_earned off by the same 10..90 points (a consistent cache with
-- the wrong numbers), for reconcile to find. The user and the points hash the window's end.
UPDATE public.user_point_balances AS b
   SET balance = b.balance + d.points, total_earned = b.total_earned + d.points
  FROM (SELECT c.user_id, 10 * (1 + floor(9 * pg_temp.rnd(:seed, 61, hashtextextended(CAST(:until AS text), 0))))
                   AS points
        FROM public.user_point_balances AS c
        WHERE pg_temp.rnd(:seed, 60, hashtextextended(CAST(:until AS text), 0)) < 0.5
        ORDER BY md5(CAST(:seed AS text) || '/drift/' || CAST(:until AS text) || c.user_id::text)
        LIMIT 1) AS d
 WHERE b.user_id = d.user_id;

-- name: late_payments --
-- Payments that arrive late (the demo's back-dated run): up to :count rewarded level-1 relationships
-- (not self-referrals) with a month k in 1..:months that overlaps the period [:period_from, :period_to)
-- by a day or more and has no PAID payment; for each, one PAID payment in the middle of that overlap,
-- recorded at :recorded_at (when it arrived), of the plan's amount (its latest payment's). Picked in a
-- seeded order, one month per relationship, so the same world gives the same late payments.
WITH month AS (
    SELECT r.id AS relationship_id, r.referrer_user_id, r.referred_user_id, m.k,
           r.rewarded_at + m.k * interval '1 month'       AS month_from,
           r.rewarded_at + (m.k + 1) * interval '1 month' AS month_to
    FROM public.user_referral_relationships r
    CROSS JOIN LATERAL generate_series(1, :months) AS m(k)
    WHERE r.level = 1 AND r.status = 'REWARDED' AND r.rewarded_at IS NOT NULL
      AND r.referrer_user_id <> r.referred_user_id
),
unpaid AS (
    SELECT m.*, greatest(m.month_from, :period_from) AS span_from, least(m.month_to, :period_to) AS span_to
    FROM month m
    WHERE least(m.month_to, :period_to) - greatest(m.month_from, :period_from) >= interval '1 day'
      AND NOT EXISTS (SELECT 1 FROM public.user_subscription_payments p
                      WHERE p.user_id = m.referred_user_id AND p.status = 'PAID'
                        AND p.paid_at >= m.month_from AND p.paid_at < m.month_to)
),
picked AS (
    SELECT DISTINCT ON (u.relationship_id) u.*
    FROM unpaid u
    ORDER BY u.relationship_id, u.k
),
chosen AS (
    SELECT p.*, date_trunc('second', p.span_from + (p.span_to - p.span_from) / 2) AS paid_at,
           coalesce((SELECT s.amount_cents FROM public.user_subscription_payments s
                     WHERE s.user_id = p.referred_user_id ORDER BY s.paid_at DESC LIMIT 1), 1999) AS amount_cents
    FROM picked p
    ORDER BY md5(CAST(:seed AS text) || '/late/' || p.relationship_id::text)
    LIMIT :count
),
inserted AS (
    INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at, created_at, updated_at)
    SELECT CAST(md5(CAST(:seed AS text) || '/late-payment/' || c.relationship_id::text || '/' || c.k) AS uuid),
           c.referred_user_id, c.amount_cents, 'PAID', c.paid_at, :recorded_at, :recorded_at
    FROM chosen c
    RETURNING user_id, amount_cents, paid_at
)
SELECT c.referrer_user_id, i.user_id AS referred_user_id, i.amount_cents, i.paid_at
FROM inserted i
JOIN chosen c ON c.referred_user_id = i.user_id;

-- name: count_rows --
SELECT (SELECT count(*) FROM public.user_referral_codes)         AS referral_codes,
       (SELECT count(*) FROM public.user_referral_relationships) AS relationships,
       (SELECT count(*) FROM public.user_subscription_payments)  AS payments,
       (SELECT count(*) FROM public.user_point_transactions)     AS ledger,
       (SELECT count(*) FROM public.user_point_balances)         AS balances;

-- name: index_ddl --
-- How to drop and re-create each index of a table (constraint indexes through their constraint), so a
-- bulk load into an empty table can build them once, sorted, instead of row by row in random order.
SELECT CASE WHEN c.oid IS NULL THEN format('DROP INDEX %s', i.indexrelid::regclass)
            ELSE format('ALTER TABLE %s DROP CONSTRAINT %I', i.indrelid::regclass, c.conname) END AS drop_ddl,
       CASE WHEN c.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
            ELSE format('ALTER TABLE %s ADD CONSTRAINT %I %s', i.indrelid::regclass, c.conname,
                        pg_get_constraintdef(c.oid)) END AS create_ddl
FROM pg_index i
LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid AND c.contype IN ('p', 'u', 'x')
WHERE i.indrelid = CAST(:table AS regclass)
ORDER BY i.indexrelid;
