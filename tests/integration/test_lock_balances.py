"""The balance lock every job takes before it reads a user's ledger (core.ledger.lock_balances, migration
022's function): exactly the given users' cache rows, held to the end of the transaction, and in one
order shared by every locker, so two jobs locking overlapping users never deadlock."""
from __future__ import annotations

import threading
import uuid

from sqlalchemy import Engine, text

from core.ledger import lock_balances
from tests.builders import add_app_points, new_id, utc

EARNED_AT = utc(2026, 1, 10)


def _users_with_balances(engine: Engine, count: int) -> list[uuid.UUID]:
    users = [new_id() for _ in range(count)]
    with engine.begin() as conn:
        for user in users:
            add_app_points(conn, user=user, delta=10, type="ADMIN_GRANT", created_at=EARNED_AT)
    return users


def _free(engine: Engine, users: list[uuid.UUID]) -> set[uuid.UUID]:
    """The users whose cache row another session can lock right now (one router statement per row, as
    a multi-shard FOR UPDATE is refused on Citus)."""
    free = set()
    with engine.connect() as other:
        for user in users:
            if other.execute(text("SELECT user_id FROM public.user_point_balances WHERE user_id = :user"
                                  " FOR UPDATE SKIP LOCKED"), {"user": user}).first():
                free.add(user)
        other.rollback()
    return free


def test_exactly_the_given_users_rows_are_locked_until_the_transaction_ends(engine):
    users = _users_with_balances(engine, 24)
    wanted, others = users[:16], users[16:]

    with engine.begin() as conn:
        locked = conn.execute(text("SELECT public.rewards_lock_balances(CAST(:ids AS uuid[]))"),
                              {"ids": [str(user) for user in wanted + wanted[:3]] + [str(new_id()), None]}
                              ).scalar_one()
        assert locked == 16  # duplicates, NULL and a user without a cache row are not counted
        assert _free(engine, users) == set(others)

    assert _free(engine, users) == set(users)


def test_two_jobs_locking_the_same_users_in_opposite_orders_never_deadlock(engine):
    users = _users_with_balances(engine, 60)
    failures: list[BaseException] = []

    def locker(order: list[uuid.UUID], start: threading.Barrier) -> None:
        try:
            with engine.begin() as conn:
                start.wait(timeout=30)
                lock_balances(conn, order)
                conn.execute(text("SELECT pg_sleep(0.05)"))
        except BaseException as error:  # noqa: BLE001 (reported by the assertion below)
            failures.append(error)

    for _ in range(5):
        start = threading.Barrier(2)
        threads = [threading.Thread(target=locker, args=(order, start)) for order in (users, users[::-1])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert failures == []


def test_lock_balances_sends_its_users_as_one_array_literal_that_locks_exactly_them(engine):
    users = _users_with_balances(engine, 12)
    wanted, others = users[:8], users[8:]

    with engine.begin() as conn:
        lock_balances(conn, [*wanted[:4], *(str(user).upper() for user in wanted[4:])])  # UUID objects and text
        assert _free(engine, users) == set(others)
