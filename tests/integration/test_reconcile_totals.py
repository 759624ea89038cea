"""reconcile's totals against a from-scratch recomputation, over random ledgers and broken caches.

The job reads the ledger once by user and takes its totals from the cache less the discrepant users'
drift, and its movements from a window on created_at; this checks every recorded total, the
roll-forward's lines and the monthly chart against plain SQL over the whole ledger, for random
histories (rows before, inside and after the window, after the as-of) and every kind of broken cache row.
"""
from __future__ import annotations

import json
import random
from datetime import timedelta
from uuid import UUID

import pytest
from sqlalchemy import text

from jobs import reconcile, reconcile_audit
from jobs.reconcile_summary import CLAWBACK, EXPIRY
from core.runner import run_job
from tests.builders import add_analyzed_ledger, add_app_points, plan_nodes, utc

AS_OF = utc(2026, 6, 1)
PREVIOUS_AS_OF = utc(2026, 5, 10, 12)
TYPES = ("REFERRAL_RECURRING", "REFERRAL_L2", "REFERRAL_WELCOME", "ADMIN_GRANT", "REDEMPTION_QUOTA",
         "REDEMPTION_UNLOCK", EXPIRY, CLAWBACK)
CACHE_FAULTS = ("true", "true", "missing", "orphan_zero", "orphan", "balance", "earned", "spent", "inconsistent")


def _random_history(conn, rng: random.Random) -> None:
    """Users with 0-8 ledger rows dated from 20 months before the as-of to 10 days after it; each user's
    cache row is true or broken in one way."""
    for number in range(1, 41):
        user = UUID(int=number)
        for _ in range(rng.randint(0, 8)):
            kind = rng.choice(TYPES)
            delta = rng.randint(1, 500) * (-1 if kind.startswith("REDEMPTION") or kind in (EXPIRY, CLAWBACK)
                                           else rng.choice((1, 1, 1, -1)))
            created_at = AS_OF - timedelta(days=rng.randint(-10, 600), seconds=rng.randint(0, 86_399))
            add_app_points(conn, user=user, delta=delta, type=kind, created_at=created_at, update_cache=False)
        _put_cache(conn, user, rng.choice(CACHE_FAULTS), rng)
    for boundary in (AS_OF, PREVIOUS_AS_OF, utc(2025, 7, 1)):  # rows exactly on each boundary
        add_app_points(conn, user=UUID(int=99), delta=11, type="ADMIN_GRANT", created_at=boundary)


def _put_cache(conn, user: UUID, fault: str, rng: random.Random) -> None:
    true = conn.execute(text(
        "SELECT coalesce(sum(delta), 0) AS balance, coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS earned,"
        " coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS spent, count(*) AS n"
        " FROM public.user_point_transactions WHERE user_id = :user"), {"user": user}).one()
    if fault == "missing" or (fault.startswith("orphan") and true.n):
        return
    balance, earned, spent = true.balance, true.earned, true.spent
    off = rng.randint(1, 90)
    if fault == "orphan":
        balance, earned, spent = off, off, 0
    elif fault == "balance":
        balance += off
    elif fault == "earned":
        earned += off
        balance += off
    elif fault == "spent":
        spent -= off
        balance -= off
    elif fault == "inconsistent":
        earned += off
    conn.execute(text("INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent)"
                      " VALUES (:user, :balance, :earned, :spent)"),
                 {"user": user, "balance": balance, "earned": earned, "spent": spent})


def _expected(conn, as_of) -> dict:
    return conn.execute(text("""
        SELECT (SELECT count(*) FROM public.user_point_transactions)                   AS ledger_rows,
               (SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions)    AS ledger_balance,
               (SELECT coalesce(sum(delta) FILTER (WHERE delta > 0), 0) FROM public.user_point_transactions)
                                                                                       AS ledger_earned,
               (SELECT coalesce(sum(delta) FILTER (WHERE delta < 0), 0) FROM public.user_point_transactions)
                                                                                       AS ledger_spent,
               (SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions WHERE created_at <= :as_of)
                                                                                       AS closing,
               (SELECT count(*) FROM public.user_point_transactions WHERE created_at > :as_of) AS rows_after,
               (SELECT coalesce(sum(delta), 0) FROM public.user_point_transactions WHERE created_at > :as_of)
                                                                                       AS points_after,
               (SELECT count(*) FROM (SELECT user_id FROM public.user_point_transactions
                                      UNION SELECT user_id FROM public.user_point_balances) AS u) AS users_checked,
               (SELECT coalesce(sum(balance), 0) FROM public.user_point_balances)      AS cache_balance
        """), {"as_of": as_of}).one()._asdict()


def _expected_period(conn, after, as_of) -> dict:
    """Issued and debited by type in (after, as-of]."""
    rows = conn.execute(text(
        "SELECT type, coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS issued,"
        " coalesce(-sum(delta) FILTER (WHERE delta < 0), 0) AS debited"
        " FROM public.user_point_transactions WHERE created_at > :after AND created_at <= :as_of GROUP BY type"),
        {"after": after, "as_of": as_of})
    return {row.type: (int(row.issued), int(row.debited)) for row in rows}


def _expected_monthly(conn, as_of) -> list[dict]:
    rows = conn.execute(text("""
        SELECT to_char(m, 'YYYY-MM') AS month,
               coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS issued,
               coalesce(-sum(delta) FILTER (WHERE delta < 0 AND type NOT IN (:expiry, :clawback)), 0) AS spent,
               coalesce(-sum(delta) FILTER (WHERE delta < 0 AND type = :expiry), 0) AS expired,
               coalesce(-sum(delta) FILTER (WHERE delta < 0 AND type = :clawback), 0) AS clawed_back
        FROM generate_series(date_trunc('month', CAST(:as_of AS timestamptz)) - interval '11 months',
                             date_trunc('month', CAST(:as_of AS timestamptz)), interval '1 month') AS m
        LEFT JOIN public.user_point_transactions t
               ON t.created_at >= m AND t.created_at < m + interval '1 month' AND t.created_at <= :as_of
        GROUP BY m ORDER BY m"""), {"as_of": as_of, "expiry": EXPIRY, "clawback": CLAWBACK})
    return [{"month": r.month, "issued": int(r.issued), "spent": int(r.spent), "expired": int(r.expired),
             "clawed_back": int(r.clawed_back)} for r in rows]


def _expected_kinds(conn) -> dict[UUID, set[str]]:
    """The discrepancy kinds of every user, judged here in Python from the raw sums (SPEC's rules)."""
    ledger = {row.user_id: (int(row.balance), int(row.earned), int(row.spent)) for row in conn.execute(text(
        "SELECT user_id, sum(delta) AS balance, coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS earned,"
        " coalesce(sum(delta) FILTER (WHERE delta < 0), 0) AS spent FROM public.user_point_transactions GROUP BY user_id"))}
    cache = {row.user_id: (int(row.balance), int(row.total_earned), int(row.total_spent)) for row in conn.execute(text(
        "SELECT user_id, balance, total_earned, total_spent FROM public.user_point_balances"))}
    kinds = {}
    for user in ledger.keys() | cache.keys():
        found, sums, cached = set(), ledger.get(user), cache.get(user)
        if sums and not cached:
            found.add("MISSING_BALANCE")
        if cached and not sums and any(cached):
            found.add("ORPHAN_BALANCE")
        if sums and cached:
            for name, mine, theirs in zip(("BALANCE", "EARNED", "SPENT"), cached, sums):
                if mine != theirs:
                    found.add(f"{name}_MISMATCH")
        if cached and cached[0] != cached[1] + cached[2]:
            found.add("CACHE_INCONSISTENT")
        if sums and sums[0] < 0:
            found.add("NEGATIVE_BALANCE")
        if found:
            kinds[user] = found
    return kinds


def _summary(result) -> dict:
    return json.loads(open(result.stats["report"].replace(".csv", ".json"), encoding="utf-8").read())


def _assert_recomputed(engine, result, as_of, previous_as_of) -> None:
    """Every total of the run, its roll-forward's lines and its monthly chart, against plain SQL."""
    assert result.status == "SUCCEEDED", result.error
    summary = _summary(result)
    with engine.connect() as conn:
        expected = _expected(conn, as_of)
        period = _expected_period(conn, previous_as_of or utc(1970, 1, 1), as_of)
        monthly = _expected_monthly(conn, as_of)
        run = conn.execute(text("SELECT * FROM public.reconciliation_runs WHERE run_id = :id"),
                           {"id": result.run_id}).one()
        kinds = _expected_kinds(conn)
        recorded = {row.user_id: set(row.kinds) for row in conn.execute(text(
            "SELECT user_id, kinds FROM public.reconciliation_discrepancies WHERE run_id = :id"), {"id": result.run_id})}
    assert recorded == kinds
    assert (run.ledger_rows, run.ledger_balance, run.ledger_earned, run.ledger_spent, run.closing_balance,
            run.users_checked, run.cache_balance) == (
        expected["ledger_rows"], expected["ledger_balance"], expected["ledger_earned"], expected["ledger_spent"],
        expected["closing"], expected["users_checked"], expected["cache_balance"])
    assert run.net_drift == expected["cache_balance"] - expected["ledger_balance"]
    assert summary["after_as_of"] == {"rows": expected["rows_after"], "points": expected["points_after"]}
    assert summary["monthly"] == monthly
    roll = summary["roll_forward"]
    assert roll["period_after"] == (previous_as_of.isoformat() if previous_as_of else None)
    assert roll["issued"] == {t: issued for t, (issued, _) in period.items() if issued}
    assert roll["expired"] == period.get(EXPIRY, (0, 0))[1]
    assert roll["clawed_back"] == period.get(CLAWBACK, (0, 0))[1]
    assert roll["spent"] == {t: debited for t, (_, debited) in period.items()
                             if debited and t not in (EXPIRY, CLAWBACK)}
    assert roll["closing"] == expected["closing"]
    assert roll["identity_holds"] and roll["gap"] == 0


@pytest.mark.parametrize("seed", range(6))
def test_every_total_equals_a_recomputation_over_the_whole_ledger(engine, settings, seed):
    rng = random.Random(seed)
    with engine.begin() as conn:
        _random_history(conn, rng)
    with_previous = seed % 2 == 1
    if with_previous:
        first = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=PREVIOUS_AS_OF)
        _assert_recomputed(engine, first, PREVIOUS_AS_OF, None)

    result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=AS_OF)

    _assert_recomputed(engine, result, AS_OF, PREVIOUS_AS_OF if with_previous else None)


def _more_rows(conn, rng: random.Random, as_of, late: bool) -> None:
    """A day's rows after a reconcile: new ones dated just before `as_of`, and (late) some dated months
    back, committed only now, as a slow app transaction or a backfill would."""
    for _ in range(rng.randint(1, 6)):
        back = timedelta(days=rng.randint(20, 300)) if late and rng.random() < 0.5 else timedelta(hours=rng.randint(1, 20))
        add_app_points(conn, user=UUID(int=rng.randint(1, 45)), delta=rng.choice((-30, 15, 40, 120)),
                       type=rng.choice(TYPES), created_at=as_of - back, update_cache=rng.random() < 0.8)


@pytest.mark.parametrize("seed", range(5))
def test_a_chain_of_reconciles_with_late_rows_and_a_rerun_of_a_past_date_stays_exact(engine, settings, seed):
    """Each run carries the previous run's chart on only when the rows dated up to its as-of are still
    the ones it counted; late rows (dated months back, committed after it) make it chart afresh."""
    rng = random.Random(100 + seed)
    with engine.begin() as conn:
        _random_history(conn, rng)
    as_ofs = [utc(2026, 3, 30, 23), utc(2026, 4, 30), utc(2026, 5, 1, 6), utc(2026, 5, 20), AS_OF]
    done = []
    for as_of in as_ofs:
        with engine.begin() as conn:
            _more_rows(conn, rng, as_of, late=rng.random() < 0.5)
        result = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_of)
        _assert_recomputed(engine, result, as_of, done[-1] if done else None)
        done.append(as_of)
    with engine.begin() as conn:
        _more_rows(conn, rng, as_ofs[2], late=True)

    rerun = run_job(reconcile.JOB, settings=settings, engine=engine, as_of=as_ofs[3])

    _assert_recomputed(engine, rerun, as_ofs[3], as_ofs[2])


# The query-plan tests below read reconcile's private statements (`_queries`): a plan belongs to the
# statement's text and the planner's settings, not to anything a run shows.


def _movements_params(**bounds):
    """`movements`' parameters for AS_OF's 12 charted months, every bound left out unless given."""
    return {"month_starts": [utc(2025, 7 + n, 1) if n < 6 else utc(2026, n - 5, 1) for n in range(13)],
            "previous_as_of": None, "as_of": AS_OF, "from": None, "after": None, "up_to": None, **bounds}


def _inner_groups_estimated(conn) -> float:
    """The planner's estimate of the (type, day, …) groups of `movements`' first aggregate."""
    plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + reconcile_audit._queries.raw("movements")),
                        _movements_params()).scalar_one()[0]["Plan"]
    aggregates = [node["Plan Rows"] for node in plan_nodes(plan) if node["Node Type"] == "Aggregate"]
    return min(aggregates[1:]) if len(aggregates) > 1 else aggregates[0]


def test_the_movements_planner_knows_the_ledger_has_few_days_so_it_hashes_them_per_worker(engine):
    """Migration 021's statistics on the UTC day: 20,000 rows on 40 days of 2 types are estimated as
    about 160 (type, day, in period, after as-of) groups, not one group per created_at; that estimate is
    what lets PostgreSQL aggregate in each parallel worker (or Citus in each shard) at scale."""
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
            " SELECT gen_random_uuid(), 1 + n % 9, CASE WHEN n % 2 = 0 THEN 'ADMIN_GRANT' ELSE 'EXPIRY' END,"
            "        timestamptz '2026-04-01' + (n % 40) * interval '1 day' + n * interval '1 second'"
            " FROM generate_series(1, 20000) AS n"))
        conn.execute(text("ANALYZE public.user_point_transactions"))
    with engine.connect() as conn:
        with_statistics = _inner_groups_estimated(conn)
        conn.execute(text("DROP STATISTICS public.upt_created_day"))
        conn.execute(text("ANALYZE public.user_point_transactions"))
        without_statistics = _inner_groups_estimated(conn)
        conn.rollback()  # the statistics come back
    assert with_statistics <= 1_000
    assert without_statistics >= 10_000  # the test can tell: without them, one group per row


def _movements_plan(conn, **bounds) -> str:
    return "\n".join(conn.execute(text("EXPLAIN " + reconcile_audit._queries.raw("movements")),
                                   _movements_params(**bounds)).scalars())


def test_a_first_reconciles_movements_compare_nothing_per_row_and_a_later_one_reads_by_date(engine):
    """The bounds left out fold away (no per-row comparison with -infinity: 2.7 s against 3.3 s at 2M
    users); a bound given still reads its range through idx_upt_created."""
    with engine.begin() as conn:
        add_analyzed_ledger(conn, rows=20000, first_at=utc(2025, 1, 1))
    with engine.connect() as conn:
        every_row = _movements_plan(conn)
        since_previous = _movements_plan(conn, previous_as_of=AS_OF - timedelta(days=1),
                                         after=AS_OF - timedelta(days=1))
    assert "Filter" not in every_row and "Cond" not in every_row, every_row
    assert "idx_upt_created" in since_previous, since_previous


def _aggregate_strategies(conn) -> set[str]:
    plan = conn.execute(text("EXPLAIN (FORMAT JSON) " + reconcile_audit._queries.raw("discrepancies"))).scalar_one()[0]
    return {node["Strategy"] for node in plan_nodes(plan["Plan"]) if node["Node Type"] == "Aggregate"}


def test_the_audit_groups_users_in_order_not_by_hashing_every_user_in_every_worker(engine):
    """With its setting the audit's per-user pass aggregates sorted input (each parallel worker its own
    range of users); hashed, it is what the planner picks here without it, and 2x slower at 2M users."""
    with engine.begin() as conn:
        add_analyzed_ledger(conn, rows=20000, first_at=utc(2026, 4, 1))
    with engine.connect() as conn:
        conn.execute(text(f"SET LOCAL work_mem = '{reconcile_audit.AUDIT_WORK_MEM}'"))
        hashed = _aggregate_strategies(conn)
        conn.execute(reconcile_audit._queries["group_users_in_index_order"])
        in_order = _aggregate_strategies(conn)
        conn.rollback()
    assert "Hashed" in hashed  # the test can tell
    assert "Hashed" not in in_order and "Sorted" in in_order
