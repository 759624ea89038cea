-- `--shape random` (bench/random_world.py): cli/sample_data.sql's world with every distribution taken
-- from a drawn shape (bench/random_shape.py), the parameters :s_<name>. Only the planning, payment and
-- ledger statements differ from sample_data.sql; the rest (codes, relationships, the cache drift, the
-- fragments) are sample_data.sql's own, looked up there. Every random choice is pg_temp.rnd(seed, stream,
-- n), so the same seed (shape and rows) gives the same world. Derived parameters: :n_max (users up to
-- :until), :grants_mean (ADMIN_GRANTs per user), :redemptions_per_earning.

-- name: plan_users --
-- Users 1..:n_max. User n signs up at anchor - span * (1 - (n/N)^(1/growth)). The first 2 % and
-- :s_unreferred_share of the rest came on their own.
CREATE TEMP TABLE sample_user AS
SELECT n,
       pg_temp.uid(:seed, 'user', n)                                                     AS user_id,
       upper(substr(md5(CAST(:seed AS text) || ':code:' || n::text), 1, 4)) || lpad(upper(to_hex(n)), 7, '0') AS code,
       to_timestamp(floor(:anchor_epoch - :span_seconds
                          * (1 - (n::float8 / :users) ^ (1.0 / CAST(:s_signup_growth AS float8))))) AS signup_at,
       (n > ceil(:users * 0.02) AND pg_temp.rnd(:seed, 1, n) >= CAST(:s_unreferred_share AS float8)) AS referred
FROM generate_series(1::bigint, :n_max) AS n;

-- name: plan_relationships --
-- One relationship per referred user n: itself (:s_self_referral_share) or its pair partner n # 1 (as
-- often: two-user cycles); else :s_influencer_share to the first :s_influencers users (the first the
-- most), :s_chain_share to one of the 3 users just before, the rest to an earlier user n * u^bias.
-- :s_level2_share stored at level 2 with the grandparent as referrer. Activation, first payment,
-- subscription length and price are fixed per relationship; whether they happened depends on time.
CREATE TEMP TABLE sample_relationship AS
WITH pick AS (
    SELECT u.n, u.user_id, u.signup_at,
           CASE WHEN pg_temp.rnd(:seed, 2, u.n) < CAST(:s_self_referral_share AS float8) THEN u.n
                WHEN pg_temp.rnd(:seed, 3, u.n / 2) < CAST(:s_self_referral_share AS float8) THEN u.n # 1
                WHEN pg_temp.rnd(:seed, 16, u.n) < CAST(:s_influencer_share AS float8)
                     THEN 1 + floor(least(CAST(:s_influencers AS bigint), u.n - 1) * pg_temp.rnd(:seed, 4, u.n) ^ 3)::bigint
                WHEN pg_temp.rnd(:seed, 16, u.n) < CAST(:s_influencer_share AS float8) + CAST(:s_chain_share AS float8)
                     THEN greatest(1, u.n - 1 - floor(3 * pg_temp.rnd(:seed, 4, u.n))::bigint)
                ELSE 1 + floor((u.n - 1) * pg_temp.rnd(:seed, 4, u.n) ^ CAST(:s_referrer_bias AS float8))::bigint
           END AS referrer_n
    FROM sample_user u
    WHERE u.referred
),
leveled AS (
    SELECT p.*,
           (p.referrer_n <> p.n AND pg_temp.rnd(:seed, 5, p.n) < CAST(:s_level2_share AS float8)
            AND gp.referrer_n IS NOT NULL AND gp.referrer_n NOT IN (p.n, p.referrer_n)) AS is_level2,
           gp.referrer_n AS grand_n
    FROM pick p
    LEFT JOIN pick gp ON gp.n = p.referrer_n
),
planned AS (
    SELECT l.n, l.user_id, l.signup_at, l.is_level2,
           CASE WHEN l.is_level2 THEN l.grand_n ELSE l.referrer_n END AS referrer_n,
           CASE WHEN pg_temp.rnd(:seed, 6, l.n) >= CAST(:s_activated_share AS float8) THEN NULL
                ELSE date_trunc('second', l.signup_at + interval '5 minutes'
                                          + pg_temp.rnd(:seed, 7, l.n) * CAST(:s_activation_days AS float8)
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
       CASE WHEN p.activated_plan IS NULL OR pg_temp.rnd(:seed, 8, p.n) >= CAST(:s_rewarded_share AS float8) THEN NULL
            ELSE date_trunc('second', p.activated_plan + interval '1 hour'
                                      + pg_temp.rnd(:seed, 9, p.n) * CAST(:s_reward_days AS float8) * interval '1 day')
       END AS rewarded_plan,
       CASE WHEN p.activated_plan IS NULL AND p.signup_at < to_timestamp(:anchor_epoch) - interval '120 days'
                 AND pg_temp.rnd(:seed, 10, p.n) < CAST(:s_expired_share AS float8)
            THEN p.signup_at + interval '91 days' END                                   AS expired_plan,
       (ARRAY[999, 1999, 2999, 4999])[1 + floor(pg_temp.rnd(:seed, 11, p.n) * 4)::int]  AS plan_cents,
       CASE WHEN pg_temp.rnd(:seed, 19, p.n) < CAST(:s_no_payment_share AS float8) THEN 0
            ELSE least(CAST(:s_max_months AS int),
                       1 + floor(-ln(1 - pg_temp.rnd(:seed, 12, p.n)) * CAST(:s_mean_months AS float8))::int)
       END AS subscription_months
FROM planned p
JOIN sample_user r ON r.n = p.referrer_n;

-- name: insert_payments --
-- Monthly payments of rewarded referred users for `subscription_months` months from the first payment
-- (month 0, at rewarded_at), a few days into each month; :s_late_share of the later ones paid up to
-- :s_late_max_days late (into a later month: a month paid twice, another not at all). After month 0:
-- :s_failure_rate FAILED (:s_retry_rate of those retried and PAID two days later), :s_refund_rate
-- REFUNDED, the rest PAID; besides, 0..:s_topups_max PAID top-ups (a quarter of the plan) a month.
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
                                  + CASE WHEN pg_temp.rnd(:seed, 28, r.n * 1000 + m.k) < CAST(:s_late_share AS float8)
                                         THEN pg_temp.rnd(:seed, 29, r.n * 1000 + m.k)
                                              * CAST(:s_late_max_days AS float8) * interval '1 day'
                                         ELSE interval '0' END END
           ) AS due_at,
           pg_temp.rnd(:seed, 14, r.n * 1000 + m.k) AS outcome,
           pg_temp.rnd(:seed, 15, r.n * 1000 + m.k) AS retry
) AS month
CROSS JOIN LATERAL (
    SELECT 0 AS attempt,
           CASE WHEN m.k = 0 OR month.outcome >= CAST(:s_failure_rate AS float8) + CAST(:s_refund_rate AS float8) THEN 'PAID'
                WHEN month.outcome < CAST(:s_failure_rate AS float8) THEN 'FAILED'
                ELSE 'REFUNDED' END AS status,
           month.due_at AS paid_at
    UNION ALL
    SELECT 1, 'PAID', month.due_at + interval '2 days'
    WHERE m.k > 0 AND month.outcome < CAST(:s_failure_rate AS float8) AND month.retry < CAST(:s_retry_rate AS float8)
    UNION ALL
    SELECT 2 + j, 'TOPUP', date_trunc('second', r.rewarded_plan + m.k * interval '1 month'
                                      + pg_temp.rnd(:seed, 17, (r.n * 1000 + m.k) * 4 + j) * interval '27 days')
    FROM generate_series(0, floor(pg_temp.rnd(:seed, 18, r.n * 1000 + m.k) * (CAST(:s_topups_max AS int) + 1))::int - 1) AS j
) AS a
WHERE r.rewarded_plan IS NOT NULL
  AND a.paid_at > :since AND a.paid_at <= :until;

-- name: app_points --
-- The app's ledger rows as candidates for core.ledger's writer (`write_points` with `own_dates`), as
-- sample_data.sql's app_points:
-- REFERRAL_FIRST_PAYMENT (1000, the referrer), REFERRAL_WELCOME (200, the referred user), and about
-- :grants_mean ADMIN_GRANTs per user (100..5000, within a year of sign-up). Each earning is partly
-- spent, never more than it brought: up to :s_redemption_share of it in about :redemptions_per_earning
-- redemptions (each 0.5-1.5x its share, so at most 90 %), and :s_correction_share of earnings get an
-- ADMIN_GRANT correction of -10 %.
WITH earning AS (
    SELECT r.n * 64 + 1 AS key_base, r.referrer_user_id AS user_id, 1000 AS points, r.rewarded_plan AS at,
           r.id AS ref_id, 'REFERRAL_FIRST_PAYMENT' AS type
    FROM sample_relationship r
    WHERE r.rewarded_plan IS NOT NULL AND r.referrer_user_id <> r.referred_user_id
    UNION ALL
    SELECT r.n * 64 + 2, r.referred_user_id, 200, r.activated_plan, r.id, 'REFERRAL_WELCOME'
    FROM sample_relationship r
    WHERE r.activated_plan IS NOT NULL
    UNION ALL
    SELECT u.n * 64 + 3 + g.i, u.user_id, 100 * (1 + floor(pg_temp.rnd(:seed, 20, u.n * 64 + g.i) * 50))::int,
           date_trunc('second', u.signup_at + pg_temp.rnd(:seed, 21, u.n * 64 + g.i) * interval '365 days'),
           NULL, 'ADMIN_GRANT'
    FROM sample_user u
    CROSS JOIN LATERAL generate_series(0, least(60, floor(pg_temp.rnd(:seed, 22, u.n)
                                                          * (2 * CAST(:grants_mean AS float8) + 1))::int) - 1) AS g(i)
),
keyed AS (
    SELECT e.*, e.key_base * 1000 AS key,
           e.points * CAST(:s_redemption_share AS float8) * pg_temp.rnd(:seed, 23, e.key_base) AS to_spend,
           pg_temp.rnd(:seed, 31, e.key_base) AS count_draw
    FROM earning e
),
counted AS (
    SELECT k.*, least(900, floor(k.to_spend / 2)::int,
                      floor(k.count_draw * (2 * CAST(:redemptions_per_earning AS float8) + 1))::int) AS redemptions
    FROM keyed k
),
spending AS (
    SELECT c.user_id, c.points, c.at, c.key + s.j AS key, s.j, c.to_spend, c.redemptions
    FROM counted c
    CROSS JOIN LATERAL generate_series(0, c.redemptions) AS s(j)
),
app_row AS (
    SELECT key + 999 AS key, user_id, points AS delta, type, ref_id, NULL::text AS note, at
    FROM counted
    UNION ALL
    SELECT key, user_id,
           CASE WHEN j = 0 THEN -floor(points * 0.1)::int
                ELSE -greatest(1, floor(to_spend / redemptions * (0.5 + pg_temp.rnd(:seed, 24, key))))::int END,
           CASE WHEN j = 0 THEN 'ADMIN_GRANT'
                WHEN pg_temp.rnd(:seed, 25, key) < 0.08 THEN 'REDEMPTION_UNLOCK'
                ELSE 'REDEMPTION_QUOTA' END,
           CASE WHEN j > 0 THEN pg_temp.uid(:seed, 'redemption', key) END,
           CASE WHEN j = 0 THEN 'correction' END,
           date_trunc('second', at + interval '1 hour'
                      + pg_temp.rnd(:seed, 26, key) * CASE WHEN j = 0 THEN interval '30 days' ELSE interval '400 days' END)
    FROM spending
    WHERE j > 0 OR pg_temp.rnd(:seed, 27, key) < CAST(:s_correction_share AS float8)
),
windowed AS (
    SELECT * FROM app_row WHERE at > :since AND at <= :until
),
kept AS (
    {kept}
)
SELECT user_id, delta, type, ref_id, CAST(NULL AS text) AS idempotency_key, note, at AS created_at
FROM kept

