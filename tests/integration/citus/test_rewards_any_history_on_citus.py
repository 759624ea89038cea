"""tests/integration/test_rewards_any_history.py against the 3-node Citus cluster (see conftest.py): the same
histories (the first seeds, bad feed rows in a view included), fewer of them, as every statement crosses
the nodes."""
import os

import pytest

from tests.integration.test_rewards_any_history import CHUNK, _chunks, run_histories

CITUS_EXAMPLES = int(os.environ.get("REWARDS_ANY_HISTORY_CITUS_EXAMPLES", "8"))


@pytest.mark.parametrize("seeds", _chunks(0, CITUS_EXAMPLES, CHUNK))
def test_any_history_ends_exact_after_a_final_run_on_citus(engine, make_settings, tmp_path, seeds):
    run_histories(engine, make_settings, tmp_path / "reports", seeds)
