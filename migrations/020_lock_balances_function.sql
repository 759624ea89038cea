-- Migration 020: the balance lock as one function for both engines: the given users' cache rows,
-- locked in user_id order. On plain PostgreSQL one SELECT … ORDER BY user_id FOR UPDATE; on Citus,
-- which refuses a multi-shard SELECT … FOR UPDATE (and whose multi-shard UPDATE takes rows in no
-- global order), one row at a time in the same order, each lock routed to its row's shard.
-- SECURITY INVOKER: the caller needs UPDATE on the cache.
CREATE OR REPLACE FUNCTION public.rewards_lock_balances(user_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    next_user uuid;
    locked integer := 0;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                   WHERE logicalrelid = 'public.user_point_balances'::regclass) THEN
            FOR next_user IN SELECT DISTINCT u FROM unnest(user_ids) AS u WHERE u IS NOT NULL ORDER BY u LOOP
                PERFORM 1 FROM public.user_point_balances WHERE user_id = next_user FOR UPDATE;
                IF FOUND THEN
                    locked := locked + 1;
                END IF;
            END LOOP;
            RETURN locked;
        END IF;
    END IF;
    PERFORM 1 FROM (SELECT user_id FROM public.user_point_balances
                    WHERE user_id = ANY(user_ids)
                    ORDER BY user_id
                    FOR UPDATE) AS rows_locked;
    GET DIAGNOSTICS locked = ROW_COUNT;
    RETURN locked;
END;
$$;
