"""tests/integration/test_balance_cli.py, every test of it (`balance` through the command line and
in-process), against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_balance_cli import *  # noqa: F401,F403  (pytest collects the imported tests here too)
