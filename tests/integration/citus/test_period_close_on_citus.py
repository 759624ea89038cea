"""tests/integration/test_period_close.py, every test of it, against the 3-node Citus cluster (see conftest.py):
the month's lines and digest summed over the distributed ledger, migration 026's closed months on the
coordinator, restatements in the reconcile's snapshot."""
from tests.integration.test_period_close import *  # noqa: F401,F403  (pytest collects the imported tests here too)
