-- Migration 027: the record rules' helpers on every Citus node.
--
-- Migration 025's trigger functions call public.rewards_bound_by_record_rules() and public.rewards_refuse().
-- Distributing a table copies its trigger functions to the workers (they are its dependencies), not the
-- functions those call; Citus copies a function itself only when it was created while workers were
-- registered. A database that got the extension after the migrations (019's documented path, by hand:
-- `SELECT public.rewards_distribute_on_citus();`) had triggers on its shards calling functions its workers
-- lacked, and the first reward clawed back on a worker failed with "function
-- public.rewards_bound_by_record_rules() does not exist". From here that call also copies the helpers,
-- and this migration copies them where the tables are distributed already (marked distributed, Citus
-- also copies them to a worker added later).

CREATE OR REPLACE FUNCTION public.rewards_distribute_record_helpers() RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN 'plain PostgreSQL: nothing to copy';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition
                   WHERE logicalrelid = 'public.user_point_transactions'::regclass) THEN
        RETURN 'not distributed yet: rewards_distribute_on_citus() copies them';
    END IF;
    PERFORM create_distributed_function('public.rewards_bound_by_record_rules()');
    PERFORM create_distributed_function('public.rewards_refuse(text)');
    RETURN 'copied to every node';
END;
$$;

-- 019's function, kept whole under another name, then called by the one the documented path calls.
ALTER FUNCTION public.rewards_distribute_on_citus() RENAME TO rewards_distribute_tables_on_citus;

CREATE FUNCTION public.rewards_distribute_on_citus() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    outcome text := public.rewards_distribute_tables_on_citus();
BEGIN
    PERFORM public.rewards_distribute_record_helpers();
    RETURN outcome;
END;
$$;

SELECT public.rewards_distribute_record_helpers();
