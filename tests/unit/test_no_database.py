"""The unit layer's own rule: no database is reachable from here (tests/unit/conftest.py)."""
from __future__ import annotations


def test_a_command_that_needs_the_database_fails_as_if_none_answered(main_in_process):
    code, out, err = main_in_process("health")

    assert (code, out) == (1, "")
    assert err == "error: database: unit tests have no database (tests/integration/ has)\n"
