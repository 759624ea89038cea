"""tests/integration/test_explain.py, every test of it (explain from the reward jobs' own derivation),
against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_explain import *  # noqa: F401,F403  (pytest collects the imported tests here too)
