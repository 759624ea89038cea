"""Unit tests: no database at all. Every connection attempt fails here as an unreachable server's would
(and no embedded server can start), so a test that needs PostgreSQL belongs in tests/integration/."""
from __future__ import annotations

import os
from typing import Any, Callable

import psycopg2
import pytest

import scheduler

NO_DATABASE_URL = "postgresql://unit-tests@127.0.0.1:1/no_database"


@pytest.fixture(autouse=True)
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise psycopg2.OperationalError("unit tests have no database (tests/integration/ has)")

    monkeypatch.setattr(psycopg2, "connect", refuse)
    monkeypatch.setattr("core.db.start_embedded_server", refuse)


@pytest.fixture
def main_in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]
                    ) -> Callable[..., tuple[int, str, str]]:
    """`scheduler.main(args)` in this process, no REWARDS_* variable set but those given:
    (exit code, stdout, stderr). Logging is left as pytest set it."""
    for name in list(os.environ):
        if name.startswith("REWARDS_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", NO_DATABASE_URL)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("core.logs.configure_logging", lambda *args, **kwargs: None)

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = scheduler.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
