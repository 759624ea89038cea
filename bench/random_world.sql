-- `--shape random` (bench/random_world.py): cli/sample_data.sql's world with every distribution taken
-- from a drawn shape (bench/random_shape.py). The planning and payment statements are sample_data.sql's,
-- given the shape's parameters (random_world.sample_shape); only the app's ledger rows differ, here, with
-- the shape's parameters :s_<name>. Every random choice is pg_temp.rnd(seed, stream, n), so the same seed
-- (shape and rows) gives the same world. Derived parameters: :grants_mean (ADMIN_GRANTs per user),
-- :redemptions_per_earning.

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

