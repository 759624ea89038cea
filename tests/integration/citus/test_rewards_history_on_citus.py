"""tests/integration/test_rewards_history.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_rewards_history import *  # noqa: F401,F403  (pytest collects the imported tests here too)
