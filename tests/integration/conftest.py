"""Real PostgreSQL for every integration test: `TEST_DATABASE_URL` when set (CI: the local server), else
the run's embedded PostgreSQL, started when a test first needs it (tests/conftest.py stops it).

The migrations are applied once per process (each xdist worker) to a template database, which is
cloned once (`CREATE DATABASE … TEMPLATE …`) into the process's own test database. Every test gets
that database as the template made it, under a name of its own: before each test, the tables the
previous test filled are truncated, the sequences restarted, the result compared with the fresh
clone (schema, triggers, privileges, database settings, planner statistics, the migrations'
records), and the database renamed (so nothing keyed by its name, and no process left connecting
to it, carries over). A test that changed any of these (a view, a trigger, a GRANT, ANALYZE, …) is
followed by a new clone instead.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from core import migrations
from core.db import make_engine, start_embedded_server
from jobs import PipelineSettings
from jobs.settings import RuleSettings
from tests.conftest import REPO, embedded_directory

_clone_numbers = itertools.count(1)
_USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
# Everything a test may change besides the rows of the tables, in one text: it must read the same
# after the reset as in a fresh clone, or the database is cloned again.
_FINGERPRINT = f"""
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT format('relation %s %s %s %s %s %s', c.oid, c.relname, c.relkind, c.relacl, c.reloptions,
                  CASE WHEN c.relkind = 'r' THEN format('%s tuples in %s pages', c.reltuples, c.relpages) END)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
    UNION ALL
    SELECT format('column %s %s %s %s %s %s', a.attrelid, a.attnum, a.attname, a.atttypid, a.attnotnull,
                  a.attisdropped)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attnum > 0 AND {_USER_SCHEMAS}
    UNION ALL
    SELECT format('default %s %s %s', d.adrelid, d.adnum, pg_get_expr(d.adbin, d.adrelid)) FROM pg_attrdef d
    UNION ALL
    SELECT format('constraint %s %s', oid, conname) FROM pg_constraint
    WHERE connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
    UNION ALL
    SELECT format('trigger %s %s %s', oid, tgname, tgenabled) FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT format('function %s %s %s %s', p.oid, p.proname, md5(p.prosrc), p.proacl)
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_SCHEMAS}
    UNION ALL
    SELECT format('type %s %s', t.oid, t.typname) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE {_USER_SCHEMAS}
    UNION ALL
    SELECT format('schema %s %s %s', n.oid, n.nspname, n.nspacl) FROM pg_namespace n WHERE {_USER_SCHEMAS}
    UNION ALL
    SELECT format('rule %s %s', oid, rulename) FROM pg_rewrite WHERE ev_class >= 16384
    UNION ALL
    SELECT format('policy %s', oid) FROM pg_policy
    UNION ALL
    SELECT format('extension %s %s', extname, extversion) FROM pg_extension
    UNION ALL
    SELECT format('default privileges %s %s', oid, defaclacl) FROM pg_default_acl
    UNION ALL
    SELECT format('database %s %s', datacl, datallowconn) FROM pg_database WHERE datname = current_database()
    UNION ALL
    SELECT format('settings %s %s', setrole, setconfig) FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL
    SELECT format('statistics %s %s', s.starelid, s.staattnum) FROM pg_statistic s
    JOIN pg_class c ON c.oid = s.starelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_SCHEMAS}
    UNION ALL
    SELECT format('sequence %s.%s %s', schemaname, sequencename, last_value) FROM pg_sequences
    UNION ALL
    SELECT format('migration %s %s %s', version, name, checksum) FROM public.rewards_schema_migrations
) AS items (item)
"""
_TABLES_WITH_PAGES = f"""
SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {_USER_SCHEMAS} AND c.relname <> 'rewards_schema_migrations'
  AND pg_relation_size(c.oid) > 0
"""


def _admin(url: str) -> Engine:
    return make_engine(url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url(request: pytest.FixtureRequest) -> str:
    """A URL of a maintenance database on the server the tests use."""
    return os.environ.get("TEST_DATABASE_URL") or start_embedded_server(embedded_directory(request.config))


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    name = f"rewards_tpl_{os.getpid()}"
    admin = _admin(server_url)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(_with_database(server_url, name))
    migrations.migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class ReusedDatabase:
    """This process's test database: a clone of the template, made pristine again before each test."""

    def __init__(self, server_url: str, template: str) -> None:
        self._server_url = server_url
        self._admin = _admin(server_url)
        self._template = template
        self.name = self._next_name()
        self._clone(self.name)
        self._pristine = self._fingerprint()
        self.used = False

    @property
    def url(self) -> str:
        return _with_database(self._server_url, self.name)

    def make_pristine(self) -> None:
        if not self.used:
            return
        self.used = False
        new_name = self._next_name()
        try:
            if self._reset() == self._pristine:
                self._rename(new_name)
                return
        except Exception:  # noqa: BLE001 — whatever the previous test left, a new clone clears it
            pass
        self._clone(new_name)

    def drop(self) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self._admin.dispose()

    @staticmethod
    def _next_name() -> str:
        return f"rewards_t{os.getpid()}_{next(_clone_numbers)}"

    def _clone(self, new_name: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{new_name}" TEMPLATE "{self._template}"'))
        self.name = new_name

    def _rename(self, new_name: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" RENAME TO "{new_name}"'))
        self.name = new_name

    def _fingerprint(self) -> str:
        engine = make_engine(self.url, pool_size=1)
        try:
            with engine.connect() as conn:
                return conn.execute(text(_FINGERPRINT)).scalar_one()
        finally:
            engine.dispose()

    def _reset(self) -> str:
        """Close every other session, empty the tables, restart the sequences; the fingerprint after."""
        engine = make_engine(self.url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE datname = current_database() AND pid <> pg_backend_pid()"))
                conn.execute(text("SET lock_timeout = '10s'"))
                conn.execute(text("SET session_replication_role = replica"))  # past the ledger's no-truncate rule
                tables = conn.execute(text(_TABLES_WITH_PAGES)).scalars().all()
                if tables:
                    conn.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
                conn.execute(text("SELECT setval(format('%I.%I', schemaname, sequencename), start_value, false)"
                                  " FROM pg_sequences WHERE last_value IS NOT NULL"))
                return conn.execute(text(_FINGERPRINT)).scalar_one()
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def _reused_database(server_url: str, template_database: str) -> Iterator[ReusedDatabase]:
    database = ReusedDatabase(server_url, template_database)
    yield database
    database.drop()


def _scratch_database(server_url: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """Create a database for one test (a clone of `template` if given), yield its URL, drop it."""
    name = f"{prefix}{os.getpid()}_{next(_clone_numbers)}"
    admin = _admin(server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    yield _with_database(server_url, name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(_reused_database: ReusedDatabase) -> str:
    """A migrated database, as fresh as a new clone of the template, for this test alone."""
    _reused_database.make_pristine()
    _reused_database.used = True
    return _reused_database.url


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A database with nothing in it (not even migration 011)."""
    yield from _scratch_database(server_url, "rewards_e")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Any:
    """Settings for this test's database; keyword arguments override fields by name."""

    def make(**overrides: Any) -> RuleSettings:
        values: dict[str, Any] = {"database_url": database_url, "reports_dir": tmp_path / "reports",
                                  "data_dir": tmp_path / "data"}
        values.update(overrides)
        return PipelineSettings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Any) -> RuleSettings:
    return make_settings()


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Any:
    """Run `python scheduler.py ARGS…` in a subprocess against this test's database."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDS_")}
        full_env.update({"DATABASE_URL": database_url, "REWARDS_REPORTS_DIR": str(tmp_path / "reports"),
                         "REWARDS_DATA_DIR": str(tmp_path / "data"), "REWARDS_LOG_FORMAT": "json"})
        full_env.update(env or {})
        return subprocess.run([sys.executable, str(REPO / "scheduler.py"), *args], cwd=tmp_path,
                              env=full_env, capture_output=True, text=True, timeout=timeout)

    return run
