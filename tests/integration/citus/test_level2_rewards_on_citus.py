"""tests/integration/test_level2_rewards.py, every test of it, against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_level2_rewards import *  # noqa: F401,F403  (pytest collects the imported tests here too)
