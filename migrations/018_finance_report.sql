-- Migration 018: what the finance report needs.

-- The reconcile summary is kept as `json` (its text as written) instead of `jsonb`, so the file,
-- the table and `report --format json` show its keys in the order the summary builds them; jsonb
-- reorders keys (shortest first). Summaries stored before keep jsonb's order.
ALTER TABLE public.reconciliation_runs ALTER COLUMN summary TYPE json USING summary::json;
