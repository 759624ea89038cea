"""The one ledger writer: every points row of every job goes through `write_points`.

A ledger row and its balance-cache change commit together: rows are keyed by an idempotency key
(`ON CONFLICT DO NOTHING`), only rows really inserted move the cache (`balance += delta`,
`total_earned += max(delta, 0)`, `total_spent += min(delta, 0)`), balance rows are created when
missing and touched in `user_id` order. Each row's `created_at` is the run's as-of instant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Connection

from core.sql import Queries

_queries = Queries(__file__)


@dataclass
class WrittenPoints:
    """What one call wrote (or, in a dry run, would write), by ledger type."""

    rows: dict[str, int] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)
    users: int = 0

    def add(self, other: WrittenPoints) -> None:
        for kind, count in other.rows.items():
            self.rows[kind] = self.rows.get(kind, 0) + count
        for kind, points in other.points.items():
            self.points[kind] = self.points.get(kind, 0) + points
        self.users += other.users

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def write_points(
    conn: Connection,
    candidates_sql: str,
    params: Mapping[str, Any],
    *,
    as_of: datetime,
    dry_run: bool = False,
) -> WrittenPoints:
    """Write the candidate rows selected by `candidates_sql` (bound with `params`).

    `candidates_sql` is a SELECT with the columns (user_id, delta, type, ref_id, idempotency_key,
    note). With `dry_run`, nothing is written and the result says what would be.
    """
    name = "preview_points" if dry_run else "write_points"
    statement = _queries.render(name, candidates=candidates_sql)
    result = WrittenPoints()
    for row in conn.execute(statement, {**params, "as_of": as_of}):
        result.rows[row.type] = int(row.row_count)
        result.points[row.type] = int(row.points)
        result.users = int(row.users)
    return result
