"""tests/integration/test_append_only.py, every test of it, against the 3-node Citus cluster (see conftest.py):
migration 025's triggers on the distributed ledger and the reference table referral_rewards, as the service role."""
from tests.integration.test_append_only import *  # noqa: F401,F403  (pytest collects the imported tests here too)
