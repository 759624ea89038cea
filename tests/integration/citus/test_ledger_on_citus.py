"""tests/integration/test_ledger.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_ledger import *  # noqa: F401,F403  (pytest collects the imported tests here too)


# On Citus the writer stages its candidates (migration 028); these hold what only that path does.
import pytest  # noqa: E402
from sqlalchemy import Connection, text  # noqa: E402

import core.ledger as staged_ledger  # noqa: E402
from tests.integration.test_ledger import AS_OF, _balance, _candidates, _ledger  # noqa: E402


def _staged_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM public.rewards_ledger_staging")).scalar_one()


def test_the_writer_stages_on_citus_and_leaves_nothing_staged(engine):
    user = new_id()  # noqa: F405
    sql, params = _candidates((user, 10, "ADMIN_GRANT", "s:1"), (user, -3, "REDEMPTION", "s:2"))

    with engine.begin() as conn:
        assert conn.execute(text("SELECT to_regclass('public.rewards_ledger_staging') IS NOT NULL")).scalar_one()
        written = write_points(conn, sql, params, as_of=AS_OF)  # noqa: F405
        assert conn.execute(text("SELECT count(*) FROM public.rewards_ledger_staging")).scalar_one() == 0

    assert written == WrittenPoints(rows={"ADMIN_GRANT": 1, "REDEMPTION": 1},  # noqa: F405
                                    points={"ADMIN_GRANT": 10, "REDEMPTION": -3}, users=1)
    assert _balance(engine, user) == (7, 10, -3)
    assert _staged_rows(engine) == 0


class _KeyWrittenMeanwhile:
    """A connection on which another transaction commits a staged key right after the writer's key check."""

    def __init__(self, conn: Connection, engine, row: tuple) -> None:
        self._conn, self._engine, self._row = conn, engine, row

    def execute(self, statement, *args, **kwargs):
        result = self._conn.execute(statement, *args, **kwargs)
        if "WHERE idempotency_key IN (SELECT t.idempotency_key" in str(statement):  # the key check
            user, delta, key = self._row
            with self._engine.begin() as other:
                other.execute(text("INSERT INTO public.user_point_transactions (user_id, delta, type, idempotency_key)"
                                   " VALUES (:user, :delta, 'ADMIN_GRANT', :key)"),
                              {"user": user, "delta": delta, "key": key})
        return result


def test_a_key_another_transaction_writes_after_the_check_fails_the_batch_whole(engine):
    user = new_id()  # noqa: F405
    sql, params = _candidates((user, 10, "ADMIN_GRANT", "race:1"), (user, 5, "ADMIN_GRANT", "race:2"))

    with pytest.raises(staged_ledger.StagedWriteError, match="inserted 1 of 2 staged rows"):
        with engine.begin() as conn:
            staged_ledger.write_points(_KeyWrittenMeanwhile(conn, engine, (user, 99, "race:2")),  # type: ignore[arg-type]
                                       sql, params, as_of=AS_OF)

    assert [(row[1], row[4]) for row in _ledger(engine)] == [(99, "race:2")]  # the other's row alone
    assert _balance(engine, user) is None  # the batch moved no cache
    assert _staged_rows(engine) == 0
