-- Migration 021: statistics on the ledger's UTC day, for reconcile's movements (jobs/reconcile.sql).
-- reconcile sums the ledger by (type, day) before it buckets the days into months. Without statistics
-- on the day the planner takes every created_at for a group of its own, so it neither hashes a few
-- thousand groups in each parallel worker nor sizes its hash table right (one process hashing millions
-- of slots, 2-3x slower at 200k users, bench/RESULTS.md). ANALYZE (autovacuum's, or below) fills them.
CREATE STATISTICS IF NOT EXISTS public.upt_created_day
    ON (date_bin(CAST('1 day' AS interval), created_at, CAST('2000-01-01 00:00:00+00' AS timestamptz)))
    FROM public.user_point_transactions;
ANALYZE public.user_point_transactions;
