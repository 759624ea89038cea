-- Migration 028: on Citus, a staging table for the ledger writer, co-located with the ledger.
--
-- The writer's one statement (core/ledger.sql, write_points) inserts the ledger rows and moves the cache
-- in data-modifying CTEs; Citus runs each CTE as its own step through the coordinator, every batch. On
-- Citus the writer stages the candidates in this table instead, distributed by user_id beside the ledger
-- and the cache, so that each of its steps (the key check, the INT guard, the ledger insert, the cache
-- update) is one statement that every shard runs on its own rows (docs/citus.md). A batch inserts its rows
-- and deletes them before it commits, so no other transaction ever sees a row here; the table is unlogged,
-- as nothing in it outlives a transaction. On plain PostgreSQL the table is not created: the one statement
-- is faster there, and the writer takes that path where this table does not exist.

CREATE OR REPLACE FUNCTION public.rewards_stage_writes_on_citus() RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 'plain PostgreSQL: the writer needs no staging table';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition
                   WHERE logicalrelid = 'public.user_point_transactions'::regclass) THEN
        RETURN 'not distributed yet: rewards_distribute_on_citus() creates it';
    END IF;
    IF to_regclass('public.rewards_ledger_staging') IS NOT NULL THEN
        RETURN 'already staged';
    END IF;
    CREATE UNLOGGED TABLE public.rewards_ledger_staging (
        n               bigserial NOT NULL,
        user_id         uuid      NOT NULL,
        delta           numeric   NOT NULL,
        type            text      NOT NULL,
        ref_id          uuid,
        idempotency_key text,
        note            text,
        created_at      timestamptz,
        -- Analyzed while empty, as a queue table mostly is, the table is planned as one row: its
        -- self-join (the INT guard's delete) then runs as a nested loop, which this key keeps an index probe.
        PRIMARY KEY (user_id, n)
    );
    PERFORM create_distributed_table('public.rewards_ledger_staging', 'user_id',
                                     colocate_with => 'public.user_point_transactions');
    RETURN 'staging table distributed';
END;
$$;

-- 027's function, under another name, then called by the one the documented path calls.
ALTER FUNCTION public.rewards_distribute_on_citus() RENAME TO rewards_distribute_tables_and_helpers_on_citus;

CREATE FUNCTION public.rewards_distribute_on_citus() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    outcome text := public.rewards_distribute_tables_and_helpers_on_citus();
BEGIN
    PERFORM public.rewards_stage_writes_on_citus();
    RETURN outcome;
END;
$$;

SELECT public.rewards_stage_writes_on_citus();
