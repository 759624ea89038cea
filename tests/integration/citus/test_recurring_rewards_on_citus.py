"""tests/integration/test_recurring_rewards.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_recurring_rewards import *  # noqa: F401,F403  (pytest collects the imported tests here too)
