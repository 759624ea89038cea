"""The liability schedule, the breakage rate and one user's balance with their lots (SPEC "Period close,
journal and liability schedule"; docs/rules.md "Expiry: lots").

Lots are counted as expire-points counts them: each positive ledger row is a lot, a reward's lot less
its own clawback; every other debit (redemptions, negative grants, recoveries, earlier EXPIRY rows)
consumes the oldest lots first. Only rows dated at or before the as-of take part: the schedule and the
balance are the ledger as it stood at that instant, as known now.

The schedule: expire-points at as-of T expires, per user, `due(T - N months)` with
`due(c) = max(0, lots earned before c - consumed)`. A run at the first instant of each month therefore
expires, per user, `due(first instant of month + 1 - N months) - due(first instant of month - N months)`
(`due_now`: what a run at T itself would expire). Since `first instant - N months` is a first instant too,
a lot earned in calendar month m expires in month m + N, whatever its day (the 31st, Feb 29, 00:00:00).
"""
from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from core.sql import Queries
from jobs.reconcile_summary import money, usd
from jobs.settings import RuleSettings

_queries = Queries(__file__)

SCHEDULE_MONTHS = 12
BREAKAGE_MONTHS = 12


def liability_schedule(conn: Connection, as_of: datetime, settings: RuleSettings) -> dict[str, Any]:
    """The points outstanding at `as_of` and when they expire if not spent (FINANCE_CONTRACT 4)."""
    raise NotImplementedError


def breakage(conn: Connection, as_of: datetime, settings: RuleSettings) -> dict[str, Any]:
    """Points expired / points issued, rows dated in [as_of - 12 months, as_of) (FINANCE_CONTRACT 5)."""
    raise NotImplementedError


def user_balance(conn: Connection, user_id: UUID | str, as_of: datetime,
                 settings: RuleSettings) -> dict[str, Any] | None:
    """One user's ledger balance at `as_of`, their lots and when each expires (FINANCE_CONTRACT 7);
    None when the user has no ledger row at all."""
    raise NotImplementedError
