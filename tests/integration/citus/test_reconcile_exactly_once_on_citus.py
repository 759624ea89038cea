"""tests/integration/test_reconcile_exactly_once.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_reconcile_exactly_once import *  # noqa: F401,F403  (pytest collects the imported tests here too)
