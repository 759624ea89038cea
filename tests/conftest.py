"""Real PostgreSQL for every test: `TEST_DATABASE_URL` when set (CI: the local server), else an
embedded PostgreSQL started for the session. The schema is migrated once into a template database;
each test gets its own clone (`CREATE DATABASE … TEMPLATE …`)."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from core import migrations
from core.db import make_engine, start_embedded_server
from jobs import Settings

REPO = Path(__file__).resolve().parent.parent
_clone_numbers = itertools.count(1)


def _admin(url: str) -> Engine:
    return make_engine(url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A URL of a maintenance database on the server the tests use."""
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="rewards-test-pg-") as data_dir:
        yield start_embedded_server(Path(data_dir))


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
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database of its own for one test."""
    yield from _scratch_database(server_url, "rewards_t", template_database)


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

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"database_url": database_url, "reports_dir": tmp_path / "reports",
                                  "data_dir": tmp_path / "data"}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Any) -> Settings:
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
