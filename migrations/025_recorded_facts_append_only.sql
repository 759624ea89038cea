-- Migration 025: recorded facts are append-only for every role but the tables' owner (SPEC v3 "Writing
-- points: one way only", "Runs, exclusion, batches"; issue 28 item 3). Grants (docs/privileges.sql) say
-- which columns the service role may touch; these triggers say which rows and which changes:
--
--   * job_runs: a run is inserted RUNNING (with a claim token, core/runs.py) or SKIPPED, its times
--     stamped by the server (no back-dated run); only the process that claimed a run (it proves the
--     token in the transaction, as the setting rewards.claim_token) renews or finishes it; anyone may
--     mark a RUNNING run ABANDONED (the takeover), changing nothing it recorded; a finished run never
--     changes; no run is deleted. So a plain INSERT RUNNING + UPDATE SUCCEEDED forges nothing, and a
--     real run in progress cannot be marked SUCCEEDED (or its stats rewritten) by anyone else.
--   * reconciliation_runs, _discrepancies, _findings: written only in a transaction that renewed or
--     finished (with the token) the lease of its own reconcile run, so rows of a finished run, or of
--     another process's run, never change; never deleted.
--   * referral_rewards: inserted standing (no clawback yet); what a reward is (key, relationship,
--     referred user, level, month, beneficiary, basis payment, basis_paid_at, basis_amount_cents, points,
--     rewarded_at, run_id) never changes; a standing reward is clawed back once (clawback_key =
--     'clawback:' || its key), after which its clawback columns never change; recovered_points only
--     grows; never deleted.
--   * user_point_transactions: a row under a job's key namespace has that namespace's type and sign
--     (recurring: REFERRAL_RECURRING > 0, l2: REFERRAL_L2 > 0, clawback:recurring|l2: REFERRAL_CLAWBACK
--     < 0, recover: REFERRAL_CLAWBACK < 0, expiry: EXPIRY < 0), the relationship its key names as ref_id
--     (rewards, clawbacks) or its own user in the key and no ref_id (recover:, expiry:). Migration 012's
--     trigger already refuses UPDATE, DELETE and TRUNCATE to everyone.
--
-- Bound: every role that is neither a superuser nor a member of the role that owns these rules (the
-- owner that applied the migrations and owns the tables): the service role, the app's role. The owner
-- can always do anything (it can drop a trigger). (The owner is read from this function's own row:
-- Citus hides its shards from pg_class, so a shard's trigger could not read its table's owner there.)
-- The checks read no other table, except those of the reconcile tables (job_runs, all local tables on
-- a Citus coordinator), so they hold on Citus shards too.

-- ── 0. Who is bound ─────────────────────────────────────────────────────────
CREATE OR REPLACE FUNCTION public.rewards_bound_by_record_rules() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS me, pg_catalog.pg_proc AS rules
                       WHERE me.rolname = current_user
                         AND rules.oid = CAST('public.rewards_bound_by_record_rules()' AS regprocedure)
                         AND (me.rolsuper OR pg_catalog.pg_has_role(me.oid, rules.proowner, 'MEMBER')))
$$;

-- Replaces a trigger. Citus creates one on a distributed or reference table only with its leave, which
-- ours may have: they read no other table. (One DDL command per EXECUTE, as Citus wants for a reference
-- table, migration 023.)
CREATE OR REPLACE FUNCTION public.rewards_replace_trigger(name text, target text, definition text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', name, target);
    EXECUTE format('CREATE TRIGGER %I %s', name, definition);
END;
$$;

CREATE OR REPLACE FUNCTION public.rewards_refuse(message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'insufficient_privilege';
END;
$$;

-- ── 1. job_runs ─────────────────────────────────────────────────────────────
-- claim_token_sha256: the hash of the claimer's token (the token itself is never stored);
-- claimed_by: the database session that claimed the run (role, client address, backend pid), set by
-- the server.
ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS claim_token_sha256 TEXT;
ALTER TABLE public.job_runs ADD COLUMN IF NOT EXISTS claimed_by TEXT;

CREATE OR REPLACE FUNCTION public.rewards_claim_token_sha256() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(convert_to(token, 'UTF8')), 'hex')
    FROM (SELECT nullif(current_setting('rewards.claim_token', true), '') AS token) AS given
    WHERE token IS NOT NULL
$$;

CREATE OR REPLACE FUNCTION public.rewards_job_runs_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bound boolean := public.rewards_bound_by_record_rules();
    token_sha256 text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF bound THEN
            PERFORM public.rewards_refuse(format('job_runs: run %s is a recorded fact; %s may not delete it',
                                                 OLD.id, current_user));
        END IF;
        RETURN OLD;
    END IF;
    token_sha256 := public.rewards_claim_token_sha256();
    IF TG_OP = 'INSERT' THEN
        NEW.claim_token_sha256 := CASE WHEN NEW.status = 'RUNNING' THEN token_sha256 END;
        NEW.claimed_by := format('%s from %s, backend pid %s', session_user,
                                 coalesce(host(inet_client_addr()), 'the local socket'), pg_backend_pid());
        IF NOT bound THEN
            RETURN NEW;
        END IF;
        IF NEW.status NOT IN ('RUNNING', 'SKIPPED') THEN
            PERFORM public.rewards_refuse(format('job_runs: %s may insert a run only as RUNNING or SKIPPED, not %s',
                                                 current_user, NEW.status));
        END IF;
        IF NEW.status = 'RUNNING' AND token_sha256 IS NULL THEN
            PERFORM public.rewards_refuse(format('job_runs: %s may insert a run only as RUNNING or SKIPPED, and a '
                                                 'RUNNING run only with a claim token (core/runs.py)', current_user));
        END IF;
        IF NEW.stats <> '{}'::jsonb OR (NEW.status = 'RUNNING' AND NEW.error IS NOT NULL) THEN
            PERFORM public.rewards_refuse(format('job_runs: %s may insert a run only as RUNNING or SKIPPED, with '
                                                 'no stats (a run counts what it did as it does it)', current_user));
        END IF;
        NEW.started_at := clock_timestamp();
        NEW.heartbeat_at := NEW.started_at;
        NEW.finished_at := CASE WHEN NEW.status = 'SKIPPED' THEN NEW.started_at END;
        RETURN NEW;
    END IF;
    -- UPDATE
    IF NOT bound THEN
        RETURN NEW;
    END IF;
    IF OLD.status <> 'RUNNING' THEN
        PERFORM public.rewards_refuse(format('job_runs: run %s is %s; a finished run does not change', OLD.id, OLD.status));
    END IF;
    IF (NEW.id, NEW.job, NEW.trigger, NEW.as_of, NEW.scheduled_for, NEW.dry_run, NEW.started_at, NEW.settings,
        NEW.host, NEW.pid, NEW.lease_seconds, NEW.claim_token_sha256, NEW.claimed_by)
       IS DISTINCT FROM
       (OLD.id, OLD.job, OLD.trigger, OLD.as_of, OLD.scheduled_for, OLD.dry_run, OLD.started_at, OLD.settings,
        OLD.host, OLD.pid, OLD.lease_seconds, OLD.claim_token_sha256, OLD.claimed_by) THEN
        PERFORM public.rewards_refuse(format('job_runs: what run %s is (job, trigger, as-of, settings, claim) does '
                                             'not change', OLD.id));
    END IF;
    IF OLD.claim_token_sha256 IS NOT NULL AND token_sha256 = OLD.claim_token_sha256 AND NEW.status <> 'SKIPPED' THEN
        -- the claimer: renews its lease, records its progress, or ends the run
        NEW.heartbeat_at := clock_timestamp();
        NEW.finished_at := CASE WHEN NEW.status <> 'RUNNING' THEN NEW.heartbeat_at END;
        RETURN NEW;
    END IF;
    IF NEW.status = 'ABANDONED' AND NEW.stats IS NOT DISTINCT FROM OLD.stats
       AND NEW.heartbeat_at IS NOT DISTINCT FROM OLD.heartbeat_at THEN
        -- a takeover: the run ends without success, and what it recorded stays as it was
        NEW.finished_at := clock_timestamp();
        RETURN NEW;
    END IF;
    PERFORM public.rewards_refuse(format('job_runs: only the process that claimed run %s (it holds the claim '
                                         'token) renews or finishes it; others may only mark it ABANDONED', OLD.id));
    RETURN NULL;
END;
$$;

SELECT public.rewards_replace_trigger('trg_job_runs_record', 'public.job_runs',
    'BEFORE INSERT OR UPDATE OR DELETE ON public.job_runs FOR EACH ROW EXECUTE FUNCTION public.rewards_job_runs_record()');

-- ── 2. The reconcile tables ─────────────────────────────────────────────────
-- A row of a reconcile run is written in a transaction that renewed (or ended) that run's lease with
-- its claim token: the run's row was last written by this very transaction (xmin), and only the
-- claimer can write it (section 1), except a takeover, which leaves it ABANDONED.
CREATE OR REPLACE FUNCTION public.rewards_reconcile_rows_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    run public.job_runs%ROWTYPE;
BEGIN
    IF NOT public.rewards_bound_by_record_rules() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'DELETE' THEN
        PERFORM public.rewards_refuse(format('%s: the rows of reconcile run %s are recorded facts; %s may not delete '
                                             'them', TG_TABLE_NAME, OLD.run_id, current_user));
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.run_id IS DISTINCT FROM OLD.run_id THEN
        PERFORM public.rewards_refuse(format('%s: a row of reconcile run %s stays that run''s', TG_TABLE_NAME, OLD.run_id));
    END IF;
    SELECT * INTO run FROM public.job_runs AS j
    WHERE j.id = NEW.run_id AND j.xmin = pg_current_xact_id()::xid;
    IF run.id IS NULL OR run.job <> 'reconcile' OR run.dry_run OR run.status NOT IN ('RUNNING', 'SUCCEEDED', 'FAILED') THEN
        PERFORM public.rewards_refuse(format('%s: %s may write the rows of reconcile run %s only as that run, in a '
                                             'transaction that renews its lease (or ends it); a finished run''s '
                                             'rows do not change', TG_TABLE_NAME, current_user, NEW.run_id));
    END IF;
    RETURN NEW;
END;
$$;

SELECT public.rewards_replace_trigger('trg_reconciliation_runs_record', 'public.reconciliation_runs',
    'BEFORE INSERT OR UPDATE OR DELETE ON public.reconciliation_runs FOR EACH ROW EXECUTE FUNCTION public.rewards_reconcile_rows_record()');
SELECT public.rewards_replace_trigger('trg_reconciliation_discrepancies_record', 'public.reconciliation_discrepancies',
    'BEFORE INSERT OR UPDATE OR DELETE ON public.reconciliation_discrepancies FOR EACH ROW EXECUTE FUNCTION public.rewards_reconcile_rows_record()');
SELECT public.rewards_replace_trigger('trg_reconciliation_findings_record', 'public.reconciliation_findings',
    'BEFORE INSERT OR UPDATE OR DELETE ON public.reconciliation_findings FOR EACH ROW EXECUTE FUNCTION public.rewards_reconcile_rows_record()');

-- The rules audit's new kind: a reward key whose ledger row is not what the rule gives (jobs/rules_audit.py).
ALTER TABLE public.reconciliation_findings DROP CONSTRAINT IF EXISTS reconciliation_findings_kind_check;
ALTER TABLE public.reconciliation_findings ADD CONSTRAINT reconciliation_findings_kind_check
    CHECK (kind IN ('REWARD_INVARIANT', 'REWARD_KEY_MISMATCH', 'RECOVERY_INVARIANT', 'EXPIRY_INVARIANT'));

-- ── 3. referral_rewards ─────────────────────────────────────────────────────
CREATE OR REPLACE FUNCTION public.rewards_referral_rewards_record() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    refusal text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        refusal := format('referral_rewards: reward %s is a recorded fact; %s may not delete it',
                          OLD.idempotency_key, current_user);
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.clawback_key IS NOT NULL OR NEW.clawed_back_at IS NOT NULL OR NEW.clawback_run_id IS NOT NULL
           OR NEW.clawed_back_points <> 0 OR NEW.expired_points <> 0 OR NEW.unrecovered_points <> 0
           OR NEW.recovered_points <> 0 THEN
            refusal := format('referral_rewards: %s may record reward %s only standing (its clawback comes later, '
                              'by a run)', current_user, NEW.idempotency_key);
        END IF;
    ELSIF (NEW.idempotency_key, NEW.relationship_id, NEW.referred_user_id, NEW.level, NEW.month, NEW.payment_id,
           NEW.basis_paid_at, NEW.basis_amount_cents, NEW.beneficiary_user_id, NEW.points, NEW.rewarded_at, NEW.run_id)
          IS DISTINCT FROM
          (OLD.idempotency_key, OLD.relationship_id, OLD.referred_user_id, OLD.level, OLD.month, OLD.payment_id,
           OLD.basis_paid_at, OLD.basis_amount_cents, OLD.beneficiary_user_id, OLD.points, OLD.rewarded_at, OLD.run_id) THEN
        refusal := format('referral_rewards: the basis of reward %s (key, relationship, referred user, level, month, '
                          'beneficiary, payment, paid_at, amount, points, run) does not change', OLD.idempotency_key);
    ELSIF OLD.clawback_key IS NOT NULL
          AND (NEW.clawback_key, NEW.clawed_back_points, NEW.expired_points, NEW.unrecovered_points, NEW.clawed_back_at,
               NEW.clawback_run_id)
              IS DISTINCT FROM
              (OLD.clawback_key, OLD.clawed_back_points, OLD.expired_points, OLD.unrecovered_points, OLD.clawed_back_at,
               OLD.clawback_run_id) THEN
        refusal := format('referral_rewards: reward %s was clawed back; its clawback does not change', OLD.idempotency_key);
    ELSIF OLD.clawback_key IS NULL AND NEW.clawback_key IS NULL
          AND (NEW.clawed_back_at, NEW.clawback_run_id) IS DISTINCT FROM (OLD.clawed_back_at, OLD.clawback_run_id) THEN
        refusal := format('referral_rewards: reward %s stands; only its clawback changes it', OLD.idempotency_key);
    ELSIF OLD.clawback_key IS NULL AND NEW.clawback_key IS NOT NULL
          AND NEW.clawback_key <> 'clawback:' || OLD.idempotency_key THEN
        refusal := format('referral_rewards: the clawback of reward %s is keyed clawback:%s', OLD.idempotency_key,
                          OLD.idempotency_key);
    ELSIF NEW.recovered_points < OLD.recovered_points THEN
        refusal := format('referral_rewards: the points recovered of reward %s only grow (%s to %s)',
                          OLD.idempotency_key, OLD.recovered_points, NEW.recovered_points);
    END IF;
    IF refusal IS NOT NULL AND public.rewards_bound_by_record_rules() THEN
        PERFORM public.rewards_refuse(refusal);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END;
$$;

SELECT public.rewards_replace_trigger('trg_referral_rewards_record', 'public.referral_rewards', $trigger$
    BEFORE UPDATE OR DELETE ON public.referral_rewards
    FOR EACH ROW EXECUTE FUNCTION public.rewards_referral_rewards_record()
$trigger$);
-- a new record: checked only when it is not recorded standing (the jobs insert many)
SELECT public.rewards_replace_trigger('trg_referral_rewards_recorded_standing', 'public.referral_rewards', $trigger$
    BEFORE INSERT ON public.referral_rewards
    FOR EACH ROW
    WHEN (NEW.clawback_key IS NOT NULL OR NEW.clawed_back_at IS NOT NULL OR NEW.clawback_run_id IS NOT NULL
          OR NEW.clawed_back_points <> 0 OR NEW.expired_points <> 0 OR NEW.unrecovered_points <> 0
          OR NEW.recovered_points <> 0)
    EXECUTE FUNCTION public.rewards_referral_rewards_record()
$trigger$);

-- ── 4. The ledger: a job's key namespace has the job's type and sign ────────
-- The rule is the trigger's WHEN (a plain expression, no function call per row): only a row that
-- breaks it reaches the function, which refuses it to a bound role.
CREATE OR REPLACE FUNCTION public.rewards_ledger_job_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF public.rewards_bound_by_record_rules() THEN
        PERFORM public.rewards_refuse(format(
            'user_point_transactions: key %s is a job''s: recurring: REFERRAL_RECURRING > 0, l2: REFERRAL_L2 > 0, '
            'clawback:recurring|l2: REFERRAL_CLAWBACK < 0 (ref_id the key''s relationship), recover: '
            'REFERRAL_CLAWBACK < 0, expiry: EXPIRY < 0 (the key''s user, no ref_id); not %s of %s points (user %s, '
            'ref_id %s)', NEW.idempotency_key, NEW.type, NEW.delta, NEW.user_id, coalesce(CAST(NEW.ref_id AS text), 'none')));
    END IF;
    RETURN NEW;
END;
$$;

SELECT public.rewards_replace_trigger('trg_upt_job_keys', 'public.user_point_transactions', $trigger$
    BEFORE INSERT ON public.user_point_transactions
    FOR EACH ROW
    WHEN (NOT coalesce(CASE split_part(NEW.idempotency_key, ':', 1)
        WHEN 'recurring' THEN NEW.type = 'REFERRAL_RECURRING' AND NEW.delta > 0
                              AND CAST(NEW.ref_id AS text) = split_part(NEW.idempotency_key, ':', 2)
        WHEN 'l2'        THEN NEW.type = 'REFERRAL_L2' AND NEW.delta > 0
                              AND CAST(NEW.ref_id AS text) = split_part(NEW.idempotency_key, ':', 2)
        WHEN 'clawback'  THEN NEW.type = 'REFERRAL_CLAWBACK' AND NEW.delta < 0
                              AND split_part(NEW.idempotency_key, ':', 2) IN ('recurring', 'l2')
                              AND CAST(NEW.ref_id AS text) = split_part(NEW.idempotency_key, ':', 3)
        WHEN 'recover'   THEN NEW.type = 'REFERRAL_CLAWBACK' AND NEW.delta < 0 AND NEW.ref_id IS NULL
                              AND split_part(NEW.idempotency_key, ':', 2) = CAST(NEW.user_id AS text)
        WHEN 'expiry'    THEN NEW.type = 'EXPIRY' AND NEW.delta < 0 AND NEW.ref_id IS NULL
                              AND split_part(NEW.idempotency_key, ':', 2) = CAST(NEW.user_id AS text)
        ELSE true
    END, false))
    EXECUTE FUNCTION public.rewards_ledger_job_keys()
$trigger$);
