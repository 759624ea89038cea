"""Applies `migrations/NNN_name.sql` in order, each once, in its own transaction.

Each applied file is recorded with a SHA-256 checksum; an applied file that was edited since is an
error. A session-level advisory lock makes two processes that migrate together take turns.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.connect import fetch_on, reading
from core.sql import Fetch

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_ADVISORY_LOCK_KEY = 0x5EED_0011  # any constant shared by every process of this product


class MigrationError(Exception):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AppliedMigration:
    """A migration recorded as applied in the database (`rewards_schema_migrations`)."""

    version: str
    name: str
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match:
            found.append(Migration(match[1], match[2], path.read_text(encoding="utf-8")))
    return found


def read_applied(fetch: Fetch) -> list[AppliedMigration]:
    """The applied migrations recorded in the database, by version."""
    if not fetch("SELECT to_regclass('public.rewards_schema_migrations') IS NOT NULL")[0][0]:
        return []
    return [AppliedMigration(row.version, row.name, row.checksum)
            for row in fetch("SELECT version, name, checksum FROM public.rewards_schema_migrations ORDER BY version")]


def _applied_checksums(conn: Connection) -> dict[str, str]:
    return {recorded.version: recorded.checksum for recorded in read_applied(fetch_on(conn))}


def _check_unchanged(migrations: list[Migration], applied: dict[str, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migrations/{migration.version}_{migration.name}.sql was edited after it was applied "
                "(checksum differs); add a new migration instead"
            )


def pending_among(applied: Sequence[AppliedMigration], directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Of the migrations on disk, those not in `applied` (`read_applied`'s); raises
    `MigrationError` if an applied file was edited."""
    migrations = discover(directory)
    checksums = {recorded.version: recorded.checksum for recorded in applied}
    _check_unchanged(migrations, checksums)
    return [m for m in migrations if m.version not in checksums]


def unknown_among(applied: Sequence[AppliedMigration], directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Of `applied` (`read_applied`'s), those this version has no file for (a newer release ran)."""
    known = {m.version for m in discover(directory)}
    return [f"{recorded.version}_{recorded.name}" for recorded in applied if recorded.version not in known]


def require_migrated(engine: Engine, *, hint: str = "") -> None:
    """Raise `MigrationError` (exit 2) naming the pending migrations, if any."""
    with reading(engine) as fetch:
        applied = read_applied(fetch)
    refuse_pending(pending_among(applied), hint=hint)


def refuse_pending(waiting: Sequence[Migration], *, hint: str = "") -> None:
    """Raise `MigrationError` (exit 2) naming `waiting`, if any."""
    if waiting:
        names = ", ".join(f"{m.version}_{m.name}" for m in waiting)
        raise MigrationError(f"database: {len(waiting)} migration(s) pending ({names}); "
                             f"run `python scheduler.py migrate` first{hint}")


def migrate(engine: Engine, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every pending migration; return those applied by this call."""
    from sqlalchemy import text

    migrations = discover(directory)
    applied_now: list[Migration] = []
    with engine.connect() as conn:
        # A migration may rightly run long, and wait for a replica migrating meanwhile: no session timeouts.
        conn.execute(text("SET statement_timeout = 0; SET lock_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        conn.commit()
        try:
            with conn.begin():
                conn.execute(text(
                    "CREATE TABLE IF NOT EXISTS public.rewards_schema_migrations ("
                    " version TEXT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
                ))
                applied = _applied_checksums(conn)
            _check_unchanged(migrations, applied)
            for migration in migrations:
                if migration.version in applied:
                    continue
                with conn.begin():
                    # The raw DB-API cursor runs the file as is: no bind-parameter parsing of its text.
                    dbapi_connection = conn.connection.dbapi_connection
                    assert dbapi_connection is not None  # checked out, for this transaction
                    dbapi_connection.cursor().execute(migration.sql)
                    conn.execute(
                        text("INSERT INTO public.rewards_schema_migrations (version, name, checksum)"
                             " VALUES (:version, :name, :checksum)"),
                        {"version": migration.version, "name": migration.name, "checksum": migration.checksum},
                    )
                applied_now.append(migration)
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            conn.execute(text("RESET statement_timeout; RESET lock_timeout"))
            conn.commit()
    return applied_now
