"""tests/integration/test_rewards_regressions.py, every test of it (issue 23's six failures: the basis
rule, recovery, bad feed rows, unstorable expiries, clawbacks meeting expiry, re-inserted relationships),
against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_rewards_regressions import *  # noqa: F401,F403  (pytest collects the imported tests here too)
