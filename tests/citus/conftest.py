"""The same tests against a local 3-node Citus cluster (bench/citus.sh): a coordinator and two
workers. Every test gets a database of its own on all three nodes, with the extension, the workers
registered, and `migrate` run through the coordinator (migration 019 distributes the tables).

Skipped, with the reason, where the cluster cannot be had: Citus not installed (CI builds it once per
machine with `bash bench/citus.sh up`), or the nodes do not start. `REWARDS_CITUS_PORT` moves the
cluster (default 9700, the workers on the next two ports).
"""
from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from core import migrations
from core.db import make_engine

REPO = Path(__file__).resolve().parents[2]
PORT = int(os.environ.get("REWARDS_CITUS_PORT", "9700"))
NODE_PORTS = (PORT, PORT + 1, PORT + 2)
SHARD_COUNT = 4  # small shards keep a test's many short statements quick; the design holds for any count
_numbers = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.citus)
            item.add_marker(pytest.mark.slow)


def _url(port: int, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _citus_installed() -> bool:
    pkglibdir = subprocess.run(["/usr/lib/postgresql/15/bin/pg_config", "--pkglibdir"], capture_output=True,
                               text=True).stdout.strip() if Path("/usr/lib/postgresql/15/bin/pg_config").exists() else ""
    return bool(pkglibdir) and (Path(pkglibdir) / "citus.so").exists()


@pytest.fixture(scope="session")
def server_url() -> str:
    """The coordinator's maintenance database; the cluster started (it is fast when already built)."""
    if not _citus_installed():
        pytest.skip("Citus is not installed here: `bash bench/citus.sh up` builds it once (root, ~2.5 min)")
    started = subprocess.run(["bash", str(REPO / "bench" / "citus.sh"), "up"], capture_output=True, text=True,
                             env={**os.environ, "CITUS_PORT": str(PORT)}, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"the Citus cluster could not be started: {started.stderr.strip()[-300:]}")
    return _url(PORT, "postgres")


def _autocommit(port: int, database: str = "postgres"):
    return make_engine(_url(port, database), pool_size=1).execution_options(isolation_level="AUTOCOMMIT")


def _create_distributed_database(name: str) -> None:
    for port in reversed(NODE_PORTS):  # the workers first: the coordinator connects to them
        admin = _autocommit(port)
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        node = _autocommit(port, name)
        with node.connect() as conn:
            conn.execute(text("CREATE EXTENSION citus"))
            if port == PORT:
                conn.execute(text(f'ALTER DATABASE "{name}" SET citus.shard_count = {SHARD_COUNT}'))
                conn.execute(text("SELECT citus_set_coordinator_host('127.0.0.1', :port)"), {"port": PORT})
                for worker in NODE_PORTS[1:]:
                    conn.execute(text("SELECT citus_add_node('127.0.0.1', :port)"), {"port": worker})
        node.dispose()


def _drop_everywhere(name: str) -> None:
    for port in NODE_PORTS:
        admin = _autocommit(port)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def template_database() -> str:
    return ""  # Citus keeps metadata per database, so a clone of a template is no cluster: see database_url


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A fresh database of its own on the three nodes, migrated through the coordinator."""
    name = f"rewards_citus_{os.getpid()}_{next(_numbers)}"
    _create_distributed_database(name)
    url = _url(PORT, name)
    engine = make_engine(url)
    migrations.migrate(engine)
    engine.dispose()
    yield url
    _drop_everywhere(name)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    name = f"rewards_citus_e_{os.getpid()}_{next(_numbers)}"
    _create_distributed_database(name)
    yield _url(PORT, name)
    _drop_everywhere(name)
