-- Migration 019: on a Citus coordinator, distribute the tables by user (docs/citus.md). On plain
-- PostgreSQL it only defines the function and changes nothing.
--
-- Distributed by user_id, co-located (a user's ledger, balance row and payments live in one shard):
--   user_point_transactions, user_point_balances, user_subscription_payments.
-- Reference tables (one copy on every node, so any join with them is shard-local): the
--   relationships (the reward jobs join them with the referred user's payments and the beneficiary's
--   ledger), referral_rewards and user_referral_codes.
-- Left as plain tables on the coordinator: job_runs and the reconcile tables (run bookkeeping, a row
--   per run, written with clock_timestamp(), which Citus refuses in an UPDATE of a replicated table, and
--   never joined with a distributed table), and rewards_schema_migrations.
-- A unique index of a distributed table must include its distribution column: the ledger's and the
-- payments' primary keys become (user_id, id), and the ledger's idempotency key is unique per user
-- (the jobs' keys name one beneficiary each; the ledger writer also skips a key that exists for
-- anyone, and inserts with a plain ON CONFLICT DO NOTHING, true on both engines).
-- The append-only and updated_at triggers are plain row triggers that read no other table, so they
-- are safe on shards (citus.enable_unsafe_triggers allows them while the tables are distributed).
--
-- A database that gets the extension after this migration ran is distributed by calling
-- `SELECT public.rewards_distribute_on_citus();` once, by hand, before the jobs run again.

CREATE OR REPLACE FUNCTION public.rewards_distribute_on_citus() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    reference_table text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 'plain PostgreSQL: nothing to distribute';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_dist_partition
               WHERE logicalrelid = 'public.user_point_transactions'::regclass) THEN
        RETURN 'already distributed';
    END IF;
    SET LOCAL citus.enable_unsafe_triggers = on;
    SET LOCAL citus.multi_shard_modify_mode = 'sequential';

    ALTER TABLE public.user_point_transactions DROP CONSTRAINT user_point_transactions_pkey;
    ALTER TABLE public.user_point_transactions ADD PRIMARY KEY (user_id, id);
    DROP INDEX public.uq_upt_idempotency_key;
    CREATE UNIQUE INDEX uq_upt_idempotency_key ON public.user_point_transactions(user_id, idempotency_key);
    CREATE INDEX idx_upt_idempotency_key ON public.user_point_transactions(idempotency_key);

    ALTER TABLE public.user_subscription_payments DROP CONSTRAINT user_subscription_payments_pkey;
    ALTER TABLE public.user_subscription_payments ADD PRIMARY KEY (user_id, id);
    CREATE INDEX idx_usp_id ON public.user_subscription_payments(id);

    PERFORM create_distributed_table('public.user_point_balances', 'user_id');
    PERFORM create_distributed_table('public.user_point_transactions', 'user_id',
                                     colocate_with => 'public.user_point_balances');
    PERFORM create_distributed_table('public.user_subscription_payments', 'user_id',
                                     colocate_with => 'public.user_point_balances');

    FOREACH reference_table IN ARRAY ARRAY['public.user_referral_relationships', 'public.user_referral_codes',
                                           'public.referral_rewards']
    LOOP
        PERFORM create_reference_table(reference_table);
    END LOOP;
    RETURN 'distributed';
END;
$$;

SELECT public.rewards_distribute_on_citus();
