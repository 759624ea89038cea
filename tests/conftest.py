"""The run as a whole, for both layers: tests/unit/ (no database) and tests/integration/ (real
PostgreSQL; its conftest.py has the database fixtures).

Nothing is left behind, even by an interrupted run. SIGTERM is turned into the KeyboardInterrupt
that Ctrl-C gives, in every process (the first one first tells its xdist workers), so fixtures are
torn down. The first process of the run picks the embedded server's directory (when
`TEST_DATABASE_URL` is unset; a worker starts the server when a test first needs it) and, at the
end, stops that server before it removes the directory. It also sweeps, at its start and at its
end, the databases, roles and directories of test processes that are gone (tests/housekeeping.py).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests import housekeeping

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_DIRECTORY = pytest.StashKey[Path]()
TERMINAL_SIZE = ("COLUMNS", "LINES")  # a worker's readline sets them (80×24): the CLI's piped width reads COLUMNS


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def embedded_directory(config: pytest.Config) -> Path:
    """Where the run's embedded PostgreSQL keeps its data."""
    if is_worker(config):
        return Path(config.workerinput["rewards_embedded_directory"])  # type: ignore[attr-defined]
    return config.stash[EMBEDDED_DIRECTORY]


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt_workers_then_this_process if not is_worker(config) else _interrupt)
    if is_worker(config):
        _restore_terminal_size(config.workerinput["rewards_terminal_size"])  # type: ignore[attr-defined]
        return
    server_url = os.environ.get("TEST_DATABASE_URL")
    housekeeping.sweep(server_url)
    if not server_url:
        config.stash[EMBEDDED_DIRECTORY] = housekeeping.temporary_directory("test-pg")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist) Every worker sees this process's terminal size and uses the run's one embedded server."""
    node.workerinput["rewards_terminal_size"] = {name: os.environ.get(name) for name in TERMINAL_SIZE}
    if EMBEDDED_DIRECTORY in node.config.stash:
        node.workerinput["rewards_embedded_directory"] = str(node.config.stash[EMBEDDED_DIRECTORY])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (in their order): two workers that steal work from each other then end the
    run on short tests, not on a long one started last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if is_worker(config):
        return
    if EMBEDDED_DIRECTORY in config.stash:
        housekeeping.remove_directory(config.stash[EMBEDDED_DIRECTORY])
    housekeeping.sweep(os.environ.get("TEST_DATABASE_URL"), finished={os.getpid()})


def _restore_terminal_size(controller: dict[str, str | None]) -> None:
    for name, value in controller.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _interrupt_workers_then_this_process(signum: int, frame: Any) -> None:
    for child in _children():
        try:
            os.kill(child, signal.SIGINT)
        except ProcessLookupError:
            pass
    _interrupt(signum, frame)


def _children() -> list[int]:
    """This process's children (xdist's workers, when it is their controller)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Any:
    """Every test starts with structlog's defaults (lines printed to the current stdout, where capsys
    reads them): a test that ran the command line in-process configured it for its own run (stderr,
    a level), and the tests that read a job's log lines must not depend on which test ran before."""
    import structlog

    structlog.reset_defaults()
    yield
