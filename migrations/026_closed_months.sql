-- Migration 026: closed months (SPEC v3 "Period close, journal and liability schedule"; issue 25).
--
-- `close YYYY-MM --sign-off NAME` records a month here once: its roll-forward's lines as signed (the
-- line keys of the period document: opening, issued.<TYPE>, spent.<TYPE>, expired, clawed_back,
-- recovered, closing, each signed as it moves the liability), a digest of the ledger rows dated in the
-- month (rows, points, and an order-independent hash: the sum of a 64-bit hash of each row's id, user,
-- delta, type and instant, so it reads the same whichever node or order sums it), the whole period
-- document as `json` (its text kept as written: `report --period` prints it byte for byte), who signed
-- and when (the server's clock, the transaction's start), and where from (the signing process's host and
-- pid, and the database session).
--
-- A signed month is a recorded fact: no role changes or deletes its row (the owner can drop the trigger,
-- as for the ledger's in migration 012). Every reconcile compares the months signed here with the ledger
-- as it is now (restatements).
--
-- On Citus it stays a plain table on the coordinator, like job_runs and the reconcile tables: a row per
-- month, never joined with a distributed table (the reconcile passes the months' bounds as values).

CREATE TABLE IF NOT EXISTS public.closed_months (
    period          DATE PRIMARY KEY CHECK (period = CAST(date_trunc('month', period) AS date)),
    opening_points  BIGINT NOT NULL,
    closing_points  BIGINT NOT NULL,
    lines           JSONB NOT NULL,
    digest_rows     BIGINT NOT NULL,
    digest_points   BIGINT NOT NULL,
    digest_hash     TEXT NOT NULL,
    document        JSON NOT NULL,
    signed_by       TEXT NOT NULL CHECK (btrim(signed_by) <> ''),
    signed_at       TIMESTAMPTZ NOT NULL,
    signed_from     TEXT NOT NULL,
    signed_session  TEXT
);

-- A month is signed once (the primary key), at the server's time, and never changes.
CREATE OR REPLACE FUNCTION public.rewards_closed_months_record() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.signed_at := now();  -- the signing transaction's start: the document states the same instant
        NEW.signed_session := format('%s from %s, backend pid %s', session_user,
                                     coalesce(host(inet_client_addr()), 'the local socket'), pg_backend_pid());
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = format('closed_months: %s was signed off by %s at %s; a signed month is a recorded fact and '
                         'does not change (%s refused)', to_char(OLD.period, 'YYYY-MM'), OLD.signed_by,
                         OLD.signed_at, TG_OP);
END;
$$;

SELECT public.rewards_replace_trigger('trg_closed_months_record', 'public.closed_months',
    'BEFORE INSERT OR UPDATE OR DELETE ON public.closed_months FOR EACH ROW EXECUTE FUNCTION public.rewards_closed_months_record()');

CREATE OR REPLACE FUNCTION public.rewards_closed_months_no_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = 'closed_months: signed months are recorded facts; TRUNCATE refused';
END;
$$;

SELECT public.rewards_replace_trigger('trg_closed_months_no_truncate', 'public.closed_months',
    'BEFORE TRUNCATE ON public.closed_months FOR EACH STATEMENT EXECUTE FUNCTION public.rewards_closed_months_no_truncate()');
