"""tests/integration/test_liability.py, every test of it (the schedule against expire-points month by month,
breakage, one user's lots), against the 3-node Citus cluster (see conftest.py)."""
from tests.integration.test_liability import *  # noqa: F401,F403  (pytest collects the imported tests here too)
