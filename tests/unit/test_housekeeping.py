"""What counts as a test run's leftover (tests/housekeeping.py): names that carry the id of the process
that made them, and nothing else (never the benchmark's `rewards_bench_*` databases)."""
from __future__ import annotations

import pytest

from tests.housekeeping import TEST_DATABASE, TEST_DIRECTORY, TEST_ROLE


@pytest.mark.parametrize("name, pid", [
    ("rewards_t123", 123), ("rewards_t123_4", 123), ("rewards_tpl_77", 77), ("rewards_e9_1", 9),
    ("rewards_ref5_2", 5), ("rewards_sample_twin_31", 31), ("rewards_bt8_400_run", 8),
])
def test_a_test_database_names_the_process_that_made_it(name, pid):
    assert int(TEST_DATABASE.match(name)[1]) == pid


@pytest.mark.parametrize("name", ["rewards_bench_2m", "rewards_bench_200k_skewed", "rewards", "rewards_demo",
                                  "postgres", "rewards_citus_tpl_12", "rewards_tx"])
def test_other_databases_are_never_taken_for_a_tests(name):
    assert TEST_DATABASE.match(name) is None


def test_roles_and_directories_name_their_process_too():
    assert int(TEST_ROLE.match("rewards_jobs_t42_0123abcd")[1]) == 42
    assert TEST_ROLE.match("rewards_jobs") is None
    assert int(TEST_DIRECTORY.match("rewards-test-pg-42-x1y2")[1]) == 42
    assert int(TEST_DIRECTORY.match("rewards-outage-pg-7-abc")[1]) == 7
    assert TEST_DIRECTORY.match("rewards-citus") is None
