"""The same tests against a local 3-node Citus cluster (bench/citus.sh): a coordinator and two
workers. Every test gets a database of its own on all three nodes, with the extension, the workers
registered, and `migrate` run through the coordinator (migration 019 distributes the tables).

They run only when asked (`REWARDS_TEST_CITUS=1`; about 8 minutes more on 2 cores) and are skipped,
with the reason, otherwise or where the cluster cannot be had: Citus not installed (`bash bench/citus.sh
up` builds it once per machine), or the nodes do not start. `REWARDS_CITUS_PORT` moves the
cluster (default 9700, the workers on the next two ports).
"""
from __future__ import annotations

import fcntl
import itertools
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from core import migrations
from core.db import make_engine

REPO = Path(__file__).resolve().parents[3]
PORT = int(os.environ.get("REWARDS_CITUS_PORT", "9700"))
NODE_PORTS = (PORT, PORT + 1, PORT + 2)
SHARD_COUNT = 4  # small shards keep a test's many short statements quick; the design holds for any count
_numbers = itertools.count(1)


# Tests of PostgreSQL's own plan shapes: on Citus, EXPLAIN shows the distributed plan, not the shards'.
NOT_ON_CITUS = {
    "test_the_audit_groups_users_in_order_not_by_hashing_every_user_in_every_worker":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_only_the_ledgers_of_users_with_points_crossing_a_cutoff_are_read":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_the_periods_clawbacks_are_read_by_index_never_by_scanning_every_reward":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_a_batch_probes_payments_and_rewards_by_index_never_scanning_all_history":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_a_batch_finds_the_parent_by_one_probe_never_scanning_all_history":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_the_candidate_query_walks_user_ids_by_index":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_the_cache_is_read_once_for_the_candidates_users_never_probed_per_row":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_no_step_of_the_writer_rescans_a_step_when_the_candidates_are_estimated_at_one_row":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_the_movements_planner_knows_the_ledger_has_few_days_so_it_hashes_them_per_worker":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_the_plan_pass_over_the_whole_ledger_may_run_with_parallel_workers":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    "test_a_first_reconciles_movements_compare_nothing_per_row_and_a_later_one_reads_by_date":
        "asserts the single-server EXPLAIN plan; Citus shows a distributed plan instead",
    # These wait for the job to block in the coordinator's pg_stat_activity; on Citus the row lock is
    # waited for on the node that holds the row, where that helper does not look.
    "test_a_redemption_committed_while_the_job_waits_for_the_lock_is_not_expired_again":
        "detects the lock wait in the coordinator's pg_stat_activity; on Citus it happens on a worker",
    "test_relationship_activated_while_the_job_waits_for_its_row_stays_active":
        "detects the lock wait in the coordinator's pg_stat_activity; on Citus it happens on a worker",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.citus)
            item.add_marker(pytest.mark.slow)
            reason = NOT_ON_CITUS.get(item.originalname)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _url(port: int, database: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def _citus_installed() -> bool:
    pkglibdir = subprocess.run(["/usr/lib/postgresql/15/bin/pg_config", "--pkglibdir"], capture_output=True,
                               text=True).stdout.strip() if Path("/usr/lib/postgresql/15/bin/pg_config").exists() else ""
    return bool(pkglibdir) and (Path(pkglibdir) / "citus.so").exists()


@pytest.fixture(scope="session")
def server_url() -> str:
    """The coordinator's maintenance database; the cluster started (it is fast when already built)."""
    if os.environ.get("REWARDS_TEST_CITUS") != "1":
        pytest.skip("the Citus tests run with REWARDS_TEST_CITUS=1 (about 8 minutes more on 2 cores)")
    if not _citus_installed():
        pytest.skip("Citus is not installed here: `bash bench/citus.sh up` builds it once (root, ~2.5 min)")
    with open(Path(tempfile.gettempdir()) / f"rewards-citus-{PORT}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist's workers start the cluster one at a time
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


def _drop_everywhere(name: str, attempts: int = 10) -> None:
    """FORCE ends the sessions in the database, but a node's Citus maintenance daemon may connect to it
    again before the drop (once in CI: "being accessed by other users"), so a refused drop is retried."""
    for port in NODE_PORTS:
        for attempt in range(1, attempts + 1):
            try:
                _autocommit_statement(port, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except OperationalError as error:
                if "being accessed by other users" not in str(error) or attempt == attempts:
                    raise
                time.sleep(0.2 * attempt)


def _autocommit_statement(port: int, statement: str) -> None:
    admin = _autocommit(port)
    with admin.connect() as conn:
        conn.execute(text(statement))
    admin.dispose()


def _run_on_every_node(statement: str, *, workers_first: bool = True) -> None:
    for port in (reversed(NODE_PORTS) if workers_first else NODE_PORTS):
        admin = _autocommit(port)
        with admin.connect() as conn:
            conn.execute(text(statement))
        admin.dispose()


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    """A migrated, distributed database on the three nodes, closed to connections so that each node
    can clone its part: Citus keeps its metadata per database and a worker is reached under the same
    database name, so a test's database is the template cloned on every node under one new name."""
    name = f"rewards_citus_tpl_{os.getpid()}"
    _drop_everywhere(name)
    _create_distributed_database(name)
    engine = make_engine(_url(PORT, name))
    migrations.migrate(engine)
    engine.dispose()
    _run_on_every_node(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    # Citus's maintenance daemon keeps a connection to each database; a clone needs none.
    _run_on_every_node(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    yield name
    _drop_everywhere(name)


def _clone_everywhere(template: str, name: str) -> None:
    for attempt in range(50):
        try:
            _run_on_every_node(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            return
        except OperationalError:  # a maintenance daemon connected again meanwhile: let it go, retry
            _drop_everywhere(name)
            _run_on_every_node(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{template}'")
            time.sleep(0.1)
    raise RuntimeError(f"could not clone {template} on the Citus nodes")


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    """A fresh distributed, migrated database of its own on the three nodes."""
    name = f"rewards_citus_{os.getpid()}_{next(_numbers)}"
    _clone_everywhere(template_database, name)
    # A test that bypasses the append-only trigger (as a careless restore would) alters the trigger,
    # which Citus allows on a distributed table only with this setting (docs/citus.md).
    _autocommit_statement(PORT, f'ALTER DATABASE "{name}" SET citus.enable_unsafe_triggers = on')
    yield _url(PORT, name)
    _drop_everywhere(name)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    name = f"rewards_citus_e_{os.getpid()}_{next(_numbers)}"
    _create_distributed_database(name)
    yield _url(PORT, name)
    _drop_everywhere(name)
