"""Small helpers that build test data with plain SQL and read the results back."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, text


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


def add_relationship(
    conn: Connection, *, referrer: uuid.UUID | None = None, referred: uuid.UUID | None = None,
    level: int = 1, status: str = "PENDING", created_at: datetime | None = None,
    activated_at: datetime | None = None, rewarded_at: datetime | None = None,
) -> uuid.UUID:
    relationship_id = new_id()
    conn.execute(text(
        "INSERT INTO public.user_referral_relationships (id, referrer_user_id, referred_user_id, referral_code,"
        " level, status, created_at, activated_at, rewarded_at)"
        " VALUES (:id, :referrer, :referred, 'CODE', :level, :status, :created_at, :activated_at, :rewarded_at)"
    ), {"id": relationship_id, "referrer": referrer or new_id(), "referred": referred or new_id(),
        "level": level, "status": status, "created_at": created_at or utc(2026, 1, 1),
        "activated_at": activated_at, "rewarded_at": rewarded_at})
    return relationship_id


def add_payment(conn: Connection, *, user: uuid.UUID, paid_at: datetime, amount_cents: int = 2000,
                status: str = "PAID") -> uuid.UUID:
    payment_id = new_id()
    conn.execute(text(
        "INSERT INTO public.user_subscription_payments (id, user_id, amount_cents, status, paid_at)"
        " VALUES (:id, :user, :amount, :status, :paid_at)"
    ), {"id": payment_id, "user": user, "amount": amount_cents, "status": status, "paid_at": paid_at})
    return payment_id


def add_app_points(conn: Connection, *, user: uuid.UUID, delta: int, type: str, created_at: datetime,
                   update_cache: bool = True) -> None:
    """A points row as the platform's app writes it: ledger row and cache in one transaction."""
    conn.execute(text(
        "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
        " VALUES (:user, :delta, :type, :created_at)"
    ), {"user": user, "delta": delta, "type": type, "created_at": created_at})
    if update_cache:
        conn.execute(text(
            "INSERT INTO public.user_point_balances AS b (user_id, balance, total_earned, total_spent)"
            " VALUES (:user, :delta, greatest(:delta, 0), least(:delta, 0))"
            " ON CONFLICT (user_id) DO UPDATE SET balance = b.balance + :delta,"
            " total_earned = b.total_earned + greatest(:delta, 0), total_spent = b.total_spent + least(:delta, 0)"
        ), {"user": user, "delta": delta})


def ledger_rows(conn: Connection, **where: Any) -> list[Any]:
    clauses = " AND ".join(f"{column} = :{column}" for column in where) or "TRUE"
    return list(conn.execute(text(
        f"SELECT user_id, delta, type, ref_id, idempotency_key, created_at FROM public.user_point_transactions"
        f" WHERE {clauses} ORDER BY idempotency_key NULLS FIRST, created_at"
    ), where))


def balance_of(conn: Connection, user: uuid.UUID) -> Any:
    return conn.execute(text(
        "SELECT balance, total_earned, total_spent FROM public.user_point_balances WHERE user_id = :user"
    ), {"user": user}).one_or_none()


def add_analyzed_ledger(conn: Connection, *, rows: int, first_at: datetime) -> None:
    """`rows` grants of 1-9 points to as many new users, a minute apart from `first_at`, then ANALYZE:
    enough for the planner to weigh parallel and sorted plans as it would at scale."""
    conn.execute(text(
        "INSERT INTO public.user_point_transactions (user_id, delta, type, created_at)"
        " SELECT gen_random_uuid(), 1 + n % 9, 'ADMIN_GRANT', CAST(:first_at AS timestamptz) + n * interval '1 minute'"
        " FROM generate_series(1, :rows) AS n"), {"rows": rows, "first_at": first_at})
    conn.execute(text("ANALYZE public.user_point_transactions"))


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an `EXPLAIN (FORMAT JSON)` plan, depth first."""
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]
