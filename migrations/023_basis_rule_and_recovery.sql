-- Migration 023: what SPEC v3's basis rule, month identity, clawback pricing and recovery need in the
-- basis record (docs/rules.md).
--
-- referral_rewards gains, per reward:
--   referred_user_id    the month's identity is (referred user, level, month), not the relationship row,
--                       so a relationship deleted and re-inserted earns only the months not standing;
--   basis_paid_at,      the basis payment as it was when the reward was written: the reward stands while
--   basis_amount_cents  its payment stays PAID, in its month, at this amount;
--   expired_points      of a clawed-back reward, the points that had already expired (not taken again);
--   recovered_points    of a clawed-back reward, the unrecovered points recovered since (recover: keys).
-- (One subcommand per ALTER TABLE: Citus propagates a reference table's DDL that way only.)
ALTER TABLE public.referral_rewards ADD COLUMN IF NOT EXISTS referred_user_id UUID;
ALTER TABLE public.referral_rewards ADD COLUMN IF NOT EXISTS basis_paid_at TIMESTAMPTZ;
ALTER TABLE public.referral_rewards ADD COLUMN IF NOT EXISTS basis_amount_cents BIGINT;
ALTER TABLE public.referral_rewards ADD COLUMN IF NOT EXISTS expired_points BIGINT NOT NULL DEFAULT 0;
ALTER TABLE public.referral_rewards ADD COLUMN IF NOT EXISTS recovered_points BIGINT NOT NULL DEFAULT 0;

-- Back-fill: the referred user from the relationship (or, where it was deleted since, from the basis
-- payment's user), and the basis as the payments table holds it now: the best knowledge there is of
-- what earned a reward written before this migration.
UPDATE public.referral_rewards AS rr
SET referred_user_id = r.referred_user_id
FROM public.user_referral_relationships AS r
WHERE r.id = rr.relationship_id AND rr.referred_user_id IS NULL;

-- (The payments are gathered first: on Citus a reference table is updated only from reference tables
-- and intermediate results, never joined with a distributed table in the same statement.)
WITH basis AS MATERIALIZED (
    SELECT p.id, p.user_id, p.paid_at, p.amount_cents
    FROM public.user_subscription_payments AS p
    WHERE p.id IN (SELECT payment_id FROM public.referral_rewards WHERE basis_paid_at IS NULL)
)
UPDATE public.referral_rewards AS rr
SET referred_user_id   = coalesce(rr.referred_user_id, basis.user_id),
    basis_paid_at      = basis.paid_at,
    basis_amount_cents = basis.amount_cents
FROM basis
WHERE basis.id = rr.payment_id AND rr.basis_paid_at IS NULL;

-- taken + expired + unrecovered = points for a clawed-back reward (0 for a standing one), and no more is
-- recovered than was unrecovered: these replace the old sum check (migration 016's second table check,
-- which PostgreSQL named referral_rewards_check1). Then the month's rewards by its identity, and the
-- outstanding unrecovered points by beneficiary. Inside a DO block: Citus refuses a CREATE INDEX or an
-- ADD CONSTRAINT on a reference table that shares its query string with other statements, as a
-- migration file is sent.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE public.referral_rewards DROP CONSTRAINT IF EXISTS referral_rewards_check1';
    EXECUTE 'ALTER TABLE public.referral_rewards ADD CONSTRAINT referral_rewards_clawback_parts CHECK (
                 clawed_back_points + expired_points + unrecovered_points
                     = CASE WHEN clawback_key IS NULL THEN 0 ELSE points END)';
    EXECUTE 'ALTER TABLE public.referral_rewards ADD CONSTRAINT referral_rewards_expired_points
                 CHECK (expired_points >= 0)';
    EXECUTE 'ALTER TABLE public.referral_rewards ADD CONSTRAINT referral_rewards_recovered_points
                 CHECK (recovered_points BETWEEN 0 AND unrecovered_points)';
    EXECUTE 'CREATE INDEX IF NOT EXISTS idx_referral_rewards_referred_month
                 ON public.referral_rewards(referred_user_id, level, month)';
    EXECUTE 'CREATE INDEX IF NOT EXISTS idx_referral_rewards_outstanding
                 ON public.referral_rewards(beneficiary_user_id, level)
                 WHERE unrecovered_points > recovered_points';
END;
$$;
