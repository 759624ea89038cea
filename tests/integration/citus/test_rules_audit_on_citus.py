"""tests/integration/test_rules_audit.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_rules_audit import *  # noqa: F401,F403  (pytest collects the imported tests here too)
