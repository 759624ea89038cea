-- Migration 016: the payments feed's recording time, and the basis payment of every reward.

-- ── 1. When billing last changed a payment ──────────────────────────────────
-- Billing records payments late, turns FAILED into PAID and refunds PAID ones; updated_at says when a
-- row last changed (kept by a trigger on every UPDATE), for audits and for billing's own tooling.
ALTER TABLE public.user_subscription_payments
    ADD COLUMN IF NOT EXISTS updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW();
CREATE INDEX IF NOT EXISTS idx_usp_updated_at ON public.user_subscription_payments(updated_at);

CREATE OR REPLACE FUNCTION public.user_subscription_payments_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS trg_usp_updated_at ON public.user_subscription_payments;
CREATE TRIGGER trg_usp_updated_at
    BEFORE UPDATE ON public.user_subscription_payments
    FOR EACH ROW EXECUTE FUNCTION public.user_subscription_payments_touch();

-- ── 2. Every reward with the money that earned it ───────────────────────────
-- One row per reward ledger row the reward jobs write, keyed by its idempotency key: the
-- relationship, the reward level (1 recurring, 2 level-2), the month k, the basis payment and the
-- points. A reward is *standing* until its basis payment stops being PAID; then its clawback is
-- recorded here (clawback_key = the clawback's ledger key, points taken back and points the
-- beneficiary's balance could not cover). At most one reward of a month stands at a time.
CREATE TABLE IF NOT EXISTS public.referral_rewards (
    idempotency_key     VARCHAR(200) PRIMARY KEY,
    relationship_id     UUID         NOT NULL,
    level               SMALLINT     NOT NULL CHECK (level IN (1, 2)),
    month               INT          NOT NULL CHECK (month >= 0),
    payment_id          UUID         NOT NULL,
    beneficiary_user_id UUID         NOT NULL,
    points              BIGINT       NOT NULL CHECK (points > 0),
    rewarded_at         TIMESTAMPTZ  NOT NULL,  -- the as-of of the run that wrote the reward
    run_id              BIGINT,                 -- that run (NULL for rewards back-filled below)
    clawback_key        VARCHAR(200) UNIQUE,
    clawed_back_points  BIGINT       NOT NULL DEFAULT 0 CHECK (clawed_back_points >= 0),
    unrecovered_points  BIGINT       NOT NULL DEFAULT 0 CHECK (unrecovered_points >= 0),
    clawed_back_at      TIMESTAMPTZ,            -- the as-of of the run that clawed it back
    clawback_run_id     BIGINT,
    CHECK ((clawback_key IS NULL) = (clawed_back_at IS NULL)),
    CHECK (clawed_back_points + unrecovered_points = CASE WHEN clawback_key IS NULL THEN 0 ELSE points END)
);
CREATE UNIQUE INDEX IF NOT EXISTS uq_referral_rewards_one_standing
    ON public.referral_rewards(relationship_id, level, month) WHERE clawback_key IS NULL;
CREATE INDEX IF NOT EXISTS idx_referral_rewards_month
    ON public.referral_rewards(relationship_id, level, month);
CREATE INDEX IF NOT EXISTS idx_referral_rewards_beneficiary
    ON public.referral_rewards(beneficiary_user_id);
CREATE INDEX IF NOT EXISTS idx_referral_rewards_clawed_back_at
    ON public.referral_rewards(clawed_back_at) WHERE clawback_key IS NOT NULL;

-- Rewards written before this migration: the jobs' notes name the month and the basis payment
-- ("recurring month 3, basis payment <uuid>"). A row whose note does not parse is left out; the next
-- run of its job records it from the ledger row it finds under the same key.
INSERT INTO public.referral_rewards
       (idempotency_key, relationship_id, level, month, payment_id, beneficiary_user_id, points, rewarded_at)
SELECT t.idempotency_key,
       t.ref_id,
       CASE t.type WHEN 'REFERRAL_RECURRING' THEN 1 ELSE 2 END,
       CAST(split_part(t.idempotency_key, ':', 3) AS int),
       CAST(substring(t.note FROM 'basis payment ([0-9a-f-]{36})$') AS uuid),
       t.user_id,
       t.delta,
       t.created_at
FROM public.user_point_transactions AS t
WHERE t.type IN ('REFERRAL_RECURRING', 'REFERRAL_L2')
  AND t.idempotency_key ~ '^(recurring|l2):[0-9a-f-]{36}:[0-9]{1,9}$'
  AND t.note ~ 'basis payment [0-9a-f-]{36}$'
  AND t.ref_id IS NOT NULL
  AND t.delta > 0
ON CONFLICT DO NOTHING;
