"""The benchmark run whole on the 3-node Citus cluster, its daily step included: what billing does to
history in a day (bench/daily.sql) must be statements Citus runs. It once refused one (a CASE calling
a stable function in a distributed UPDATE) after the first runs had been measured.

No timing is asserted (targets are measured by `python -m bench run --citus`, never tested)."""
from __future__ import annotations

import json
import os

from bench import __main__ as bench_cli
from bench import report
from bench.datasets import Citus, drop_database

USERS = 400
JOBS = ("recurring-rewards", "level2-rewards", "expiring-soon")


def test_the_daily_step_runs_on_citus_and_each_job_matches_its_exact_daily_bound(server_url, tmp_path):
    prefix = f"rewards_bc{os.getpid()}"
    json_path = tmp_path / "results.json"
    try:
        code = bench_cli.main(["run", "--citus", "--shard-count", "4", "--users", str(USERS),
                               "--as-of", "2026-06-01", "--jobs", ",".join(JOBS), "--database-url", server_url,
                               "--prefix", prefix, "--json", str(json_path)])
    finally:  # the dataset is measured in place and dropped; this is for a run that stopped half-way
        drop_database(server_url, f"{prefix}_400", citus=Citus.of(server_url, 4))

    assert code == 0
    [size] = json.loads(json_path.read_text())["sizes"]
    assert size["engine"].startswith("Citus")
    daily = size["daily"]
    assert daily["changed"]["corrected_payments"] > 0 and daily["changed"]["refund_rewarded_payments"] > 0
    assert [entry["job"] for entry in daily["jobs"]] == list(JOBS)
    assert all(entry["run"]["status"] == "SUCCEEDED" for entry in daily["jobs"]), daily["jobs"]
    assert {entry["job"]: report._rows_done(entry["run"]) for entry in daily["jobs"]} == \
        {entry["job"]: entry["bound"]["rows"] for entry in daily["jobs"]}
