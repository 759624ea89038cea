"""tests/integration/test_finance_report.py, every test of it, against the 3-node Citus cluster (see conftest.py):
the report reads the previous reconcile's stored summary and the earlier reconciles there too."""
from tests.integration.test_finance_report import *  # noqa: F401,F403  (pytest collects the imported tests here too)
