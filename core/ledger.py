"""The one ledger writer: every points row of every job goes through `write_points`.

A ledger row and its balance-cache change commit together: rows are keyed by an idempotency key
(`ON CONFLICT DO NOTHING`), only rows really inserted move the cache (`balance += delta`,
`total_earned += max(delta, 0)`, `total_spent += min(delta, 0)`), balance rows are created when
missing and touched in `user_id` order. Each row's `created_at` is the run's as-of instant. A row
that cannot be stored (over the ledger's or the cache's INT) is left out and reported, never failing
the call, so one absurd amount cannot block every other row.

On Citus the same rules run as a few statements over a staging table co-located with the ledger
(migration 028), each of which every shard runs on its own rows; the one statement is faster on a
single server, and `write_points` takes it wherever that table does not exist.

The sample data (cli/sample_data.py) seeds the app's own rows through the same statement: they have
no idempotency key, as the app writes them, and carry their own `created_at` (`own_dates=True`).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator, Mapping, Sequence
from uuid import UUID

from sqlalchemy import Connection

from core.sql import Queries, uuid_array

_queries = Queries(__file__)


@dataclass
class WrittenPoints:
    """What one call wrote (or, in a dry run, would write), by ledger type, and the keys it could not store."""

    rows: dict[str, int] = field(default_factory=dict)
    points: dict[str, int] = field(default_factory=dict)
    users: int = 0
    unstorable: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def write_points(conn: Connection, candidates_sql: str, params: Mapping[str, object], *,
                 as_of: datetime, own_dates: bool = False) -> WrittenPoints:
    """Write the candidate rows selected by `candidates_sql` (bound with `params`).

    `candidates_sql` is a SELECT with the columns (user_id, delta, type, ref_id, idempotency_key,
    note), and `created_at` with `own_dates` (else every row is dated `as_of`, which also stamps the
    balance rows moved). For a dry run, call it inside `undone_when(conn, dry_run=True)`.
    """
    if conn.execute(_queries["stages_writes"]).scalar_one():
        return _write_staged(conn, candidates_sql, params, as_of=as_of, own_dates=own_dates)
    created_at = "created_at" if own_dates else ":as_of"
    statement = _queries.render("write_points", candidates=candidates_sql, created_at=created_at)
    result = WrittenPoints()
    for row in conn.execute(statement, {**params, "as_of": as_of}):
        if row.outcome == "written":
            result.rows[row.type] = int(row.row_count)
            result.points[row.type] = int(row.points)
            result.users = int(row.users)
        else:
            result.unstorable.extend(row.keys)
    return result


class StagedWriteError(RuntimeError):
    """Fewer ledger rows were inserted than were staged: another transaction wrote one of the keys meanwhile."""


def _write_staged(conn: Connection, candidates_sql: str, params: Mapping[str, object], *,
                  as_of: datetime, own_dates: bool) -> WrittenPoints:
    """`write_points` on Citus, step by step over the staging table of migration 028 (core/ledger.sql).

    Every staged row must be inserted, or the cache would move by a row that is not in the ledger: when
    one is not (a key written by another transaction after the check), the batch fails whole."""
    created_at = "c.created_at" if own_dates else ":as_of"
    values = {**params, "as_of": as_of}
    result = WrittenPoints()
    if not conn.execute(_queries.render("stage_points", candidates=candidates_sql, created_at=created_at),
                        values).rowcount:
        return result
    conn.execute(_queries["unstage_known_keys"])
    unstorable = conn.execute(_queries["unstage_unstorable"]).all()
    result.unstorable = sorted(row.idempotency_key for row in unstorable
                               if row.idempotency_key is not None and not row.repeated)
    staged = conn.execute(_queries["staged_by_type"]).all()
    staged_rows = sum(row.row_count for row in staged)
    inserted = conn.execute(_queries["insert_staged"]).rowcount
    if inserted != staged_rows:
        raise StagedWriteError(f"the ledger writer inserted {inserted} of {staged_rows} staged rows: "
                               "a key was written by another transaction meanwhile")
    if inserted:
        result.users = conn.execute(_queries["move_cache_by_staged"], {"as_of": as_of}).rowcount
        for row in staged:
            result.rows[row.type] = int(row.row_count)
            result.points[row.type] = int(row.points)
    conn.execute(_queries["clear_staged"])
    return result


def lock_balances(conn: Connection, user_ids: Sequence[UUID | str]) -> None:
    """Lock these users' balance rows (user_id order) before reading their ledger sums."""
    conn.execute(_queries["lock_balances"], {"user_ids": uuid_array(user_ids)})


@contextmanager
def undone_when(conn: Connection, *, dry_run: bool) -> Iterator[None]:
    """For a dry run, everything written inside is undone (a savepoint rolled back), so a dry run
    reports exactly what the same statements would change, and changes nothing."""
    if not dry_run:
        yield
        return
    savepoint = conn.begin_nested()
    try:
        yield
    finally:
        savepoint.rollback()
