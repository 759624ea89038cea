"""The one ledger writer: rows keyed by idempotency key, created_at = as-of, and the balance cache moved
by exactly the rows inserted; the ledger itself is append-only."""
from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import core.ledger as core_ledger
from core.ledger import WrittenPoints, undone_when, write_points
from tests.builders import add_app_points, balance_of, ledger_rows, new_id, utc

AS_OF = utc(2026, 6, 1, 0, 15)


def _candidates(*rows: tuple[uuid.UUID, int, str, str | None]) -> tuple[str, dict[str, Any]]:
    """A job-like SELECT of literal candidate rows (user, delta, type, key), with its parameters."""
    selects, params = [], {}
    for i, (user, delta, kind, key) in enumerate(rows):
        selects.append(
            f"SELECT CAST(:user_{i} AS uuid) AS user_id, CAST(:delta_{i} AS int) AS delta,"
            f" CAST(:type_{i} AS text) AS type, CAST(:ref_{i} AS uuid) AS ref_id,"
            f" CAST(:key_{i} AS text) AS idempotency_key, CAST(:note_{i} AS text) AS note")
        params.update({f"user_{i}": user, f"delta_{i}": delta, f"type_{i}": kind, f"ref_{i}": None,
                       f"key_{i}": key, f"note_{i}": f"note {key}"})
    return " UNION ALL ".join(selects), params


def _write(engine, *rows, dry_run: bool = False) -> WrittenPoints:
    sql, params = _candidates(*rows)
    with engine.begin() as conn, undone_when(conn, dry_run=dry_run):
        return write_points(conn, sql, params, as_of=AS_OF)


def _ledger(engine) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(row) for row in ledger_rows(conn)]


def _balances(engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT user_id, balance, total_earned, total_spent, updated_at FROM public.user_point_balances"
            " ORDER BY user_id"))]


def _balance(engine, user) -> tuple[int, int, int] | None:
    with engine.connect() as conn:
        row = balance_of(conn, user)
    return None if row is None else tuple(row)


def test_rows_are_inserted_with_created_at_as_of_and_a_missing_cache_row_is_created(engine):
    user, relationship = new_id(), new_id()
    sql = ("SELECT CAST(:user AS uuid) AS user_id, 100 AS delta, 'REFERRAL_RECURRING' AS type,"
           " CAST(:ref AS uuid) AS ref_id, 'recurring:r:1' AS idempotency_key, 'month 1' AS note")

    with engine.begin() as conn:
        written = write_points(conn, sql, {"user": user, "ref": relationship}, as_of=AS_OF)

    with engine.connect() as conn:
        row = conn.execute(text("SELECT user_id, delta, type, ref_id, idempotency_key, note, created_at"
                                " FROM public.user_point_transactions")).one()
    assert tuple(row) == (user, 100, "REFERRAL_RECURRING", relationship, "recurring:r:1", "month 1", AS_OF)
    assert _balances(engine) == [(user, 100, 100, 0, AS_OF)]
    assert written == WrittenPoints(rows={"REFERRAL_RECURRING": 1}, points={"REFERRAL_RECURRING": 100}, users=1)


def test_cache_of_a_new_user_sums_positive_and_negative_deltas(engine):
    user = new_id()

    written = _write(engine, (user, 100, "REFERRAL_RECURRING", "a:1"), (user, 5, "REFERRAL_L2", "a:2"),
                     (user, -30, "EXPIRY", "a:3"))

    assert _balance(engine, user) == (75, 105, -30)  # 100 + 5 - 30; earned 100 + 5; spent -30
    assert written == WrittenPoints(rows={"EXPIRY": 1, "REFERRAL_L2": 1, "REFERRAL_RECURRING": 1},
                                    points={"EXPIRY": -30, "REFERRAL_L2": 5, "REFERRAL_RECURRING": 100}, users=1)


def test_existing_cache_row_moves_by_exactly_the_new_rows(engine):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=200, type="REFERRAL_FIRST_PAYMENT", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=user, delta=-50, type="REDEMPTION_QUOTA", created_at=utc(2026, 2, 1))
    assert _balance(engine, user) == (150, 200, -50)

    _write(engine, (user, 40, "REFERRAL_RECURRING", "b:1"), (user, -25, "EXPIRY", "b:2"))

    assert _balance(engine, user) == (165, 240, -75)  # 150 + 40 - 25; 200 + 40; -50 - 25


def test_each_user_gets_only_their_own_rows(engine):
    first, second = sorted([new_id(), new_id()])

    written = _write(engine, (second, 7, "REFERRAL_L2", "c:2"), (first, 3, "REFERRAL_L2", "c:1"))

    assert _balance(engine, first) == (3, 3, 0)
    assert _balance(engine, second) == (7, 7, 0)
    assert written.users == 2 and written.total_rows == 2


def test_same_keys_twice_insert_nothing_and_leave_the_cache_alone(engine):
    user = new_id()
    rows = [(user, 100, "REFERRAL_RECURRING", "d:1"), (user, -20, "EXPIRY", "d:2")]
    _write(engine, *rows)
    ledger, balances = _ledger(engine), _balances(engine)

    again = _write(engine, *rows)

    assert again == WrittenPoints()
    assert _ledger(engine) == ledger
    assert _balances(engine) == balances


def test_a_known_key_is_skipped_even_with_another_delta_and_only_new_keys_move_the_cache(engine):
    user = new_id()
    _write(engine, (user, 10, "REFERRAL_RECURRING", "e:1"))

    written = _write(engine, (user, 999, "REFERRAL_RECURRING", "e:1"), (user, 7, "REFERRAL_RECURRING", "e:2"))

    assert written == WrittenPoints(rows={"REFERRAL_RECURRING": 1}, points={"REFERRAL_RECURRING": 7}, users=1)
    assert _balance(engine, user) == (17, 17, 0)
    assert [(row[1], row[4]) for row in _ledger(engine)] == [(10, "e:1"), (7, "e:2")]


def test_a_key_repeated_within_one_call_is_written_once(engine):
    user = new_id()

    _write(engine, (user, 10, "REFERRAL_RECURRING", "f:1"), (user, 10, "REFERRAL_RECURRING", "f:1"))

    assert len(_ledger(engine)) == 1
    assert _balance(engine, user) == (10, 10, 0)


def test_zero_delta_is_not_written_and_creates_no_cache_row(engine):
    user, nothing_user = new_id(), new_id()

    written = _write(engine, (user, 0, "REFERRAL_RECURRING", "g:0"), (user, 3, "REFERRAL_RECURRING", "g:1"),
                     (nothing_user, 0, "REFERRAL_L2", "g:2"))

    assert [row[4] for row in _ledger(engine)] == ["g:1"]
    assert _balance(engine, user) == (3, 3, 0)
    assert _balance(engine, nothing_user) is None
    assert written == WrittenPoints(rows={"REFERRAL_RECURRING": 1}, points={"REFERRAL_RECURRING": 3}, users=1)


def test_no_candidates_write_nothing(engine):
    with engine.begin() as conn:
        written = write_points(conn, "SELECT CAST(NULL AS uuid) AS user_id, 1 AS delta, 'X' AS type,"
                               " CAST(NULL AS uuid) AS ref_id, 'k' AS idempotency_key, '' AS note WHERE false",
                               {}, as_of=AS_OF)

    assert written == WrittenPoints()
    assert _ledger(engine) == [] and _balances(engine) == []


def test_a_delta_over_int_is_unstorable_reported_and_blocks_no_other_row(engine):
    user = new_id()
    huge = 2**31

    sql = ("SELECT CAST(:user AS uuid) AS user_id, CAST(:delta AS bigint) AS delta, 'REFERRAL_RECURRING' AS type,"
           " CAST(NULL AS uuid) AS ref_id, CAST(:key AS text) AS idempotency_key, '' AS note"
           " UNION ALL SELECT CAST(:user AS uuid), 7, 'REFERRAL_RECURRING', NULL, 'k:2', ''")
    with engine.begin() as conn:
        written = write_points(conn, sql, {"user": user, "delta": huge, "key": "k:1"}, as_of=AS_OF)

    assert written.unstorable == ["k:1"]
    assert written.rows == {"REFERRAL_RECURRING": 1}
    assert [row[4] for row in _ledger(engine)] == ["k:2"]
    assert _balance(engine, user) == (7, 7, 0)


def test_rows_that_would_carry_the_cache_past_int_are_unstorable_and_earlier_ones_are_written(engine):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=2**31 - 100, type="ADMIN_GRANT", created_at=utc(2026, 1, 1))

    written = _write(engine, (user, 60, "REFERRAL_RECURRING", "m:1"), (user, 60, "REFERRAL_RECURRING", "m:2"))

    assert written.unstorable == ["m:2"]  # 2**31 - 100 + 60 fits; + 60 more would not
    assert _balance(engine, user) == (2**31 - 40, 2**31 - 40, 0)


def test_a_key_written_once_is_not_reported_unstorable_for_its_repeated_copy(engine):
    user = new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=user, delta=2**31 - 100, type="ADMIN_GRANT", created_at=utc(2026, 1, 1))

    written = _write(engine, (user, 60, "REFERRAL_RECURRING", "r:1"), (user, 60, "REFERRAL_RECURRING", "r:1"),
                     (user, 60, "REFERRAL_RECURRING", "r:2"))

    # the copy of r:1 would carry the cache past INT, but r:1 itself was written; r:2 was not
    assert written.unstorable == ["r:2"]
    assert [row[4] for row in _ledger(engine)] == [None, "r:1"]
    assert _balance(engine, user) == (2**31 - 40, 2**31 - 40, 0)


def test_each_users_int_guard_reads_that_users_own_cache_row(engine):
    near_limit, far_from_it, without_cache = new_id(), new_id(), new_id()
    with engine.begin() as conn:
        add_app_points(conn, user=near_limit, delta=2**31 - 100, type="ADMIN_GRANT", created_at=utc(2026, 1, 1))
        add_app_points(conn, user=far_from_it, delta=5, type="ADMIN_GRANT", created_at=utc(2026, 1, 1))

    written = _write(engine, *[(user, 60, "REFERRAL_RECURRING", f"{name}:{n}")
                               for user, name in ((near_limit, "a"), (far_from_it, "b"), (without_cache, "c"))
                               for n in (1, 2)])

    assert written.unstorable == ["a:2"]
    assert _balance(engine, near_limit) == (2**31 - 40, 2**31 - 40, 0)
    assert _balance(engine, far_from_it) == (125, 125, 0)
    assert _balance(engine, without_cache) == (120, 120, 0)


def test_dry_run_previews_exactly_what_the_real_call_then_writes_and_changes_nothing(engine):
    first, second = new_id(), new_id()
    _write(engine, (first, 50, "REFERRAL_RECURRING", "h:1"))
    rows = [(first, 50, "REFERRAL_RECURRING", "h:1"),   # already written: skipped
            (first, 20, "REFERRAL_RECURRING", "h:2"),
            (second, 5, "REFERRAL_L2", "h:3"),
            (second, -4, "EXPIRY", "h:4"),
            (second, 0, "REFERRAL_L2", "h:5")]           # zero: never written
    ledger, balances = _ledger(engine), _balances(engine)

    preview = _write(engine, *rows, dry_run=True)

    assert _ledger(engine) == ledger
    assert _balances(engine) == balances
    assert preview == WrittenPoints(rows={"EXPIRY": 1, "REFERRAL_L2": 1, "REFERRAL_RECURRING": 1},
                                    points={"EXPIRY": -4, "REFERRAL_L2": 5, "REFERRAL_RECURRING": 20}, users=2)
    assert _write(engine, *rows) == preview


def test_rows_the_app_wrote_without_a_key_never_conflict(engine):
    user = new_id()
    with engine.begin() as conn:
        for _ in range(2):  # the same grant twice, as the app may well write it
            add_app_points(conn, user=user, delta=25, type="REFERRAL_WELCOME", created_at=utc(2026, 1, 1))

    _write(engine, (user, 10, "REFERRAL_RECURRING", "i:1"))

    assert sorted((row[1], row[4]) for row in _ledger(engine)) == [(10, "i:1"), (25, None), (25, None)]
    assert _balance(engine, user) == (60, 60, 0)


@pytest.mark.parametrize("statement", [
    "UPDATE public.user_point_transactions SET delta = delta + 1",
    "DELETE FROM public.user_point_transactions",
    "TRUNCATE public.user_point_transactions",
], ids=["update", "delete", "truncate"])
def test_append_only_trigger_rejects_changing_the_ledger(engine, statement):
    _write(engine, (new_id(), 10, "REFERRAL_RECURRING", "j:1"))
    ledger = _ledger(engine)

    with pytest.raises(DBAPIError, match="append-only"):
        with engine.begin() as conn:
            conn.execute(text(statement))

    assert _ledger(engine) == ledger


_USERS = 3
_DELTA_OF_KEY = [-10, -5, 0, 5, 10, 15, 20]  # key i always carries this delta, for user i % _USERS


@pytest.mark.slow
@hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.lists(st.integers(0, len(_DELTA_OF_KEY) - 1), min_size=1, max_size=6), min_size=1, max_size=4),
       dry_runs=st.lists(st.booleans(), min_size=4, max_size=4))
def test_cache_always_equals_the_sums_of_the_distinct_keys_written(engine, calls, dry_runs):
    users = sorted(new_id() for _ in range(_USERS))
    prefix = uuid.uuid4().hex

    for keys, dry_run in zip(calls, dry_runs):
        _write(engine, *[(users[k % _USERS], _DELTA_OF_KEY[k], "ADMIN_GRANT", f"{prefix}:{k}") for k in keys],
               dry_run=dry_run)

    written_keys = {k for keys, dry_run in zip(calls, dry_runs) if not dry_run for k in keys}
    for index, user in enumerate(users):
        deltas = [_DELTA_OF_KEY[k] for k in written_keys if k % _USERS == index and _DELTA_OF_KEY[k] != 0]
        expected = (sum(deltas), sum(d for d in deltas if d > 0), sum(d for d in deltas if d < 0))
        assert _balance(engine, user) == (expected if deltas else None)
        with engine.connect() as conn:
            assert sorted(row.delta for row in ledger_rows(conn, user_id=user)) == sorted(deltas)


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(child for sub in node.get("Plans", []) for child in _plan_nodes(sub))]


def test_the_cache_is_read_once_for_the_candidates_users_never_probed_per_row(engine):
    """The INT guard reads the candidates' users' cache rows in one index scan. Read with `IN (SELECT …
    FROM fits_int)`, PostgreSQL took the CTE for a few rows and scanned it once per cache row: 1 s a batch
    of 5,000 (expire-points, 200k users, seed 1 of `bench --shape random`)."""
    candidates, others = 2000, 3000
    with engine.connect() as conn:  # rolled back: the writes of EXPLAIN ANALYZE are undone
        conn.execute(text(
            "CREATE TEMP TABLE candidates AS SELECT gen_random_uuid() AS user_id, 5 AS delta,"
            " 'REFERRAL_RECURRING' AS type, CAST(NULL AS uuid) AS ref_id, 'plan:' || n AS idempotency_key,"
            " '' AS note FROM generate_series(1, :n) AS n"), {"n": candidates})
        conn.execute(text(
            "INSERT INTO public.user_point_balances (user_id, balance, total_earned, total_spent, updated_at)"
            " SELECT user_id, 10, 10, 0, :as_of FROM candidates"
            " UNION ALL SELECT gen_random_uuid(), 10, 10, 0, :as_of FROM generate_series(1, :others)"),
            {"as_of": AS_OF, "others": others})
        # A query-plan test reads the writer's private statement: a plan belongs to the statement's text.
        statement = core_ledger._queries.render(
            "write_points", candidates="SELECT * FROM pg_temp.candidates", created_at=":as_of")
        plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.text), {"as_of": AS_OF}).scalar_one()

    nodes = _plan_nodes(plan[0]["Plan"])
    cache_reads = [node for node in nodes
                   if node.get("Relation Name") == "user_point_balances" and node["Node Type"] != "ModifyTable"]
    assert cache_reads, "the plan reads the cache"
    for node in cache_reads:
        assert node["Actual Loops"] == 1 and node["Actual Rows"] == candidates, node["Node Type"]
    assert all(node["Actual Loops"] <= 1 for node in nodes if node["Node Type"] == "CTE Scan")


def test_no_step_of_the_writer_rescans_a_step_when_the_candidates_are_estimated_at_one_row(engine):
    """A job's candidates the planner takes for one row (three equality filters on a table it has no
    statistics for) must not turn the writer's steps into nested loops over each other: the unstorable
    rows, found by an anti-join of two such steps, took 2.5 s for a batch of 5,000 that way."""
    candidates = 3000
    with engine.connect() as conn:  # rolled back: the writes of EXPLAIN ANALYZE are undone
        conn.execute(text(
            "CREATE TEMP TABLE candidates AS SELECT gen_random_uuid() AS user_id, 5 AS delta,"
            " 'REFERRAL_RECURRING' AS type, CAST(NULL AS uuid) AS ref_id, 'under:' || n AS idempotency_key,"
            " '' AS note FROM generate_series(1, :n) AS n"), {"n": candidates})
        statement = core_ledger._queries.render(
            "write_points", created_at=":as_of",
            candidates="SELECT * FROM pg_temp.candidates WHERE delta = 5 AND note = '' AND type = 'REFERRAL_RECURRING'")
        plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + statement.text), {"as_of": AS_OF}).scalar_one()

    nodes = _plan_nodes(plan[0]["Plan"])
    [candidate_step] = [node for node in nodes if node.get("Subplan Name") == "CTE candidate"]
    assert candidate_step["Plan Rows"] <= 5, "the candidates are estimated at about one row"
    inserted = [node for node in nodes if node["Node Type"] == "ModifyTable"
                and node.get("Relation Name") == "user_point_transactions"]
    assert inserted and inserted[0]["Actual Rows"] == candidates
    assert all(node["Actual Loops"] <= 1 for node in nodes if node["Node Type"] == "CTE Scan")


def test_the_writer_has_a_staging_table_exactly_where_citus_is(engine):
    with engine.connect() as conn:
        citus = conn.execute(text("SELECT count(*) > 0 FROM pg_extension WHERE extname = 'citus'")).scalar_one()
        staged = conn.execute(text("SELECT to_regclass('public.rewards_ledger_staging') IS NOT NULL")).scalar_one()
    assert staged == citus
