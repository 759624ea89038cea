-- Checks made once at start, before any run.

-- name: database_clock --
SELECT clock_timestamp();
