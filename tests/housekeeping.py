"""What a test run may leave behind, and how it is cleared away.

Every database, role and temporary directory a test run makes carries the id of the process that
made it in its name (`rewards_t1234`, `rewards_tpl_1234`, `rewards_jobs_t1234_…`,
`/tmp/rewards-test-pg-1234-…`). Once that process is gone, what it left is stale: `sweep` drops
those databases and roles and, for a directory, first stops the PostgreSQL server running in it and
then removes it. The first process of a run sweeps at its start and at its end (tests/conftest.py),
so even a run killed outright is cleared by its own end or by the next run.

`python -m tests.housekeeping [SERVER_URL]` (CI, after the suite) lists what ended test processes
left behind and exits 1 if there is anything.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Collection

from sqlalchemy import text
from sqlalchemy.engine import make_url

TEST_DATABASE = re.compile(r"^rewards_(?:tpl_|t|e|ref|sample_twin_|bt)(\d+)(?:_|$)")
TEST_ROLE = re.compile(r"^rewards_jobs_t(\d+)_[0-9a-f]{8}$")
TEST_DIRECTORY = re.compile(r"^rewards-[a-z]+(?:-[a-z]+)*-(\d+)-")
LOCAL_HOSTS = {None, "", "127.0.0.1", "localhost", "::1"}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _stale(pid: int, finished: Collection[int]) -> bool:
    return pid in finished or not process_alive(pid)


def temporary_directory(kind: str) -> Path:
    """A new temporary directory named for this process (`rewards-KIND-PID-…`)."""
    return Path(tempfile.mkdtemp(prefix=f"rewards-{kind}-{os.getpid()}-"))


def sweep(server_url: str | None, *, finished: Collection[int] = ()) -> None:
    """Clear what processes that are gone (or listed in `finished`) left behind on this machine."""
    for directory in stale_directories(finished):
        remove_directory(directory)
    if server_url and make_url(server_url).host in LOCAL_HOSTS:  # process ids mean nothing elsewhere
        drop_stale_databases(server_url, finished)


def stale_directories(finished: Collection[int] = ()) -> list[Path]:
    found = []
    for directory in Path(tempfile.gettempdir()).glob("rewards-*"):
        match = TEST_DIRECTORY.match(directory.name)
        if match and directory.is_dir() and _stale(int(match[1]), finished):
            found.append(directory)
    return found


def remove_directory(directory: Path) -> None:
    """Stop every PostgreSQL server whose data lies under `directory`, then remove it."""
    for pgdata in [*directory.glob("pgdata"), *directory.glob("*/pgdata")]:
        stop_postmaster(pgdata)
    shutil.rmtree(directory, ignore_errors=True)


def stop_postmaster(pgdata: Path, timeout: float = 30) -> None:
    """Stop the server of `pgdata` if one runs: a fast shutdown, an immediate one if that hangs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    for stop_signal in (signal.SIGINT, signal.SIGQUIT):
        try:
            os.kill(pid, stop_signal)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not process_alive(pid):
                return
            time.sleep(0.05)


def leftovers(server_url: str | None) -> list[str]:
    """What test processes that are gone left behind: directories, running servers, databases, roles."""
    found = [str(directory) for directory in stale_directories()]
    if server_url:
        from core.db import make_engine

        admin = make_engine(server_url, pool_size=1)
        try:
            with admin.connect() as conn:
                names = [*conn.execute(text("SELECT datname FROM pg_database")).scalars(),
                         *conn.execute(text("SELECT rolname FROM pg_roles")).scalars()]
        finally:
            admin.dispose()
        found += [name for name in names
                  if (match := TEST_DATABASE.match(name) or TEST_ROLE.match(name)) and _stale(int(match[1]), ())]
    return found


def drop_stale_databases(server_url: str, finished: Collection[int] = ()) -> list[str]:
    """Drop the test databases, then the test roles, of processes that are gone; return their names."""
    from core.db import make_engine

    admin = make_engine(server_url, pool_size=1).execution_options(isolation_level="AUTOCOMMIT")
    dropped = []
    try:
        with admin.connect() as conn:
            databases = conn.execute(text("SELECT datname FROM pg_database")).scalars().all()
            roles = conn.execute(text("SELECT rolname FROM pg_roles")).scalars().all()
            for pattern, kind, names in ((TEST_DATABASE, "DATABASE", databases), (TEST_ROLE, "ROLE", roles)):
                for name in names:
                    match = pattern.match(name)
                    if match and _stale(int(match[1]), finished):
                        force = " WITH (FORCE)" if kind == "DATABASE" else ""
                        try:
                            conn.execute(text(f'DROP {kind} IF EXISTS "{name}"{force}'))
                            dropped.append(name)
                        except Exception:  # noqa: BLE001 — another sweeper was first, or the role still owns something
                            pass
    except Exception:  # noqa: BLE001 — no server: the run's own tests say so, clearly
        pass
    finally:
        admin.dispose()
    return dropped


if __name__ == "__main__":
    import sys

    left = leftovers(sys.argv[1] if len(sys.argv) > 1 else None)
    for item in left:
        print(f"left behind by a test run: {item}", file=sys.stderr)
    sys.exit(1 if left else 0)
