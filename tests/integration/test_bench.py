"""The benchmark works end to end on a tiny dataset: datasets, bounds, CLI runs, daily run, report.

No timing is asserted (targets are measured by `python -m bench run`, never tested)."""
from __future__ import annotations

import json
import os

import pytest
from sqlalchemy import text

from bench import __main__ as bench_cli
from bench import report
from bench.datasets import World, drop_database, ensure_dataset, find_dataset
from core.db import make_engine
from jobs import PIPELINE
from tests.builders import utc

USERS = 400
AS_OF = utc(2026, 6, 1)


@pytest.fixture
def prefix(server_url):
    """A database name prefix of this test's own; its databases are dropped afterwards."""
    name = f"rewards_bt{os.getpid()}"
    yield name
    for suffix in ("400", "400_run", "400_prof", "1500_s5_random_run"):
        drop_database(server_url, f"{name}_{suffix}")


def _database_exists(server: str, name: str) -> bool:
    engine = make_engine(server, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_database WHERE datname = :name"),
                                {"name": name}).scalar_one() == 1
    finally:
        engine.dispose()


def test_a_dataset_is_labelled_with_its_world_and_reused_until_the_world_changes(server_url, prefix):
    world = World(USERS, as_of=AS_OF)
    built = ensure_dataset(server_url, world, prefix=prefix)
    assert built.name == f"{prefix}_400" and built.counts["referral_codes"] == USERS
    assert built.generate_seconds is not None

    found = find_dataset(server_url, built.name)
    assert found is not None and found.world == world and found.counts == built.counts
    assert ensure_dataset(server_url, world, prefix=prefix).generate_seconds == built.generate_seconds

    other_day = World(USERS, as_of=utc(2026, 7, 1))
    rebuilt = ensure_dataset(server_url, other_day, prefix=prefix)
    assert rebuilt.name == built.name and find_dataset(server_url, built.name).world == other_day


@pytest.mark.slow
def test_run_measures_bound_job_rerun_and_a_daily_run_for_every_job(server_url, prefix, tmp_path, capsys):
    json_path, markdown_path = tmp_path / "results.json", tmp_path / "results.md"
    code = bench_cli.main(["run", "--users", str(USERS), "--as-of", "2026-06-01", "--database-url", server_url,
                           "--prefix", prefix, "--json", str(json_path), "--markdown", str(markdown_path)])

    assert code == 0
    results = json.loads(json_path.read_text())
    [size] = results["sizes"]
    assert size["users"] == USERS and size["dataset"]["referral_codes"] == USERS
    assert size["engine"] == "PostgreSQL" and results["machine"]["engine"] == "PostgreSQL (one server)"
    assert size["load_average_before"] >= 0 and size["daily"]["load_average"] >= 0
    assert [job["job"] for job in size["jobs"]] == [job.name for job in PIPELINE]
    for job in size["jobs"]:
        assert job["first"]["status"] == "SUCCEEDED", job
        assert job["rerun"]["status"] == "SUCCEEDED", job
        assert job["first"]["peak_rss_mb"] > 10  # a Python process, measured
        assert set(job["targets"]) == {"job_to_bound", "rerun_to_first", "peak_rss", "lock_hold"}
    done = {job["job"]: report._rows_done(job["first"]) for job in size["jobs"]}
    bound = {job["job"]: job["bound"]["rows"] for job in size["jobs"]}
    assert done == bound  # the statements written from SPEC.md and the jobs did the same work
    assert bound["recurring-rewards"] > 0 and bound["expire-pending"] > 0 and bound["reconcile"] == 6
    reports = ("expiring-soon", "reconcile")  # read and report on every run, by design
    assert {report._rows_done(job["rerun"]) for job in size["jobs"] if job["job"] not in reports} == {0}
    assert all(job["targets"]["rerun_to_first"] is None for job in size["jobs"] if job["job"] in reports)

    daily = size["daily"]
    assert daily["added"]["ledger"] > 0  # a day of 400 users: some redemptions, hardly a sign-up
    assert daily["changed"]["refund_rewarded_payments"] > 0 and daily["changed"]["late_payments"] > 0
    assert daily["changed"]["corrected_payments"] > 0
    assert [entry["run"]["status"] for entry in daily["jobs"]] == ["SUCCEEDED"] * len(PIPELINE)
    daily_done = {entry["job"]: report._rows_done(entry["run"]) for entry in daily["jobs"]}
    daily_bound = {entry["job"]: entry["bound"]["rows"] for entry in daily["jobs"]}
    assert daily_done == daily_bound  # the exact daily bound and the daily run wrote the same rows
    rewards = {entry["job"]: entry["run"]["stats"] for entry in daily["jobs"]}
    assert rewards["recurring-rewards"]["clawbacks"] + rewards["level2-rewards"]["clawbacks"] > 0  # refunds

    printed = capsys.readouterr().out
    assert "job/bound" in printed and "daily run at 2026-06-02" in printed
    assert markdown_path.read_text().startswith("machine:")
    assert not _database_exists(server_url, f"{prefix}_400_run")  # the measured clone is dropped


def test_citus_needs_a_coordinator_and_is_refused_where_a_clone_is_needed(server_url, prefix, capsys):
    code = bench_cli.main(["run", "--citus", "--users", str(USERS), "--database-url", server_url, "--prefix", prefix])
    assert code == 2
    assert "--citus:" in capsys.readouterr().err  # the plain server has no citus extension
    assert not _database_exists(server_url, f"{prefix}_400")
    assert bench_cli.main(["profile", "expire-points", "--citus", "--database-url", server_url]) == 2
    assert "profile: not on Citus" in capsys.readouterr().err


def test_generate_builds_the_dataset_database_named_by_size(server_url, prefix, capsys):
    code = bench_cli.main(["generate", "--users", str(USERS), "--as-of", "2026-06-01",
                           "--database-url", server_url, "--prefix", prefix])

    assert code == 0
    assert capsys.readouterr().out.startswith(f"{prefix}_400: 400 users (default shape): ")
    found = find_dataset(server_url, f"{prefix}_400")
    assert found is not None and found.world == World(USERS, as_of=AS_OF)


def test_the_skewed_shape_is_its_own_dataset_with_influencers_chains_and_payments_on_many_days(
        server_url, prefix, capsys):
    code = bench_cli.main(["generate", "--users", "3000", "--shape", "skewed", "--as-of", "2026-06-01",
                           "--database-url", server_url, "--prefix", prefix])

    assert code == 0
    assert capsys.readouterr().out.startswith(f"{prefix}_3k_skewed: 3,000 users (skewed shape): ")
    found = find_dataset(server_url, f"{prefix}_3k_skewed")
    assert found is not None and found.world == World(3000, as_of=AS_OF, shape="skewed")
    engine = make_engine(found.url, pool_size=1)
    try:
        with engine.connect() as conn:
            top_referrals = conn.execute(text(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM public.user_referral_relationships"
                " GROUP BY referrer_user_id) AS r")).scalar_one()
            never_referred_referrers = conn.execute(text(
                "SELECT count(DISTINCT r.referrer_user_id) FROM public.user_referral_relationships r"
                " WHERE NOT EXISTS (SELECT 1 FROM public.user_referral_relationships p"
                "                   WHERE p.referred_user_id = r.referrer_user_id)")).scalar_one()
            chain_links = conn.execute(text(  # B invited C and was invited by A: a level-2 chain
                "SELECT count(*) FROM public.user_referral_relationships r"
                " JOIN public.user_referral_relationships p ON p.referred_user_id = r.referrer_user_id")).scalar_one()
            months_with_several_payments = conn.execute(text(
                "SELECT count(*) FROM (SELECT user_id, date_trunc('month', paid_at) FROM public.user_subscription_payments"
                " WHERE status = 'PAID' GROUP BY 1, 2 HAVING count(DISTINCT paid_at::date) >= 3) AS m")).scalar_one()
    finally:
        engine.dispose()
        drop_database(server_url, f"{prefix}_3k_skewed")
    assert top_referrals >= 50  # an influencer: 20 % of referrals go to 40 users, the first most (8,704 at 200k)
    assert never_referred_referrers >= 100
    assert chain_links >= 1000
    assert months_with_several_payments >= 100


@pytest.mark.slow
def test_profile_runs_the_job_after_the_earlier_ones_and_times_its_statements(server_url, prefix):
    from bench.profile import profile_job, render

    dataset = ensure_dataset(server_url, World(USERS, as_of=AS_OF), prefix=prefix)
    result, times = profile_job(server_url, dataset, "expire-points", progress=lambda _: None)

    assert result.status == "SUCCEEDED" and result.stats["users_checked"] > 0
    assert sum(times.calls.values()) > 3
    assert "expire-points: SUCCEEDED" in render(result, times)
    assert not _database_exists(server_url, f"{prefix}_400_prof")


# The rows of each generated table, as compared: the ledger's without their ids, which the one ledger
# writer takes from the database (the app's rows have no key, so nothing else of theirs is random).
_COMPARED = {"user_referral_relationships": "t", "user_subscription_payments": "t",
             "user_point_transactions": "(t.user_id, t.delta, t.type, t.ref_id, t.note, t.created_at)",
             "user_point_balances": "t"}


def _fingerprint(url: str) -> tuple[str, ...]:
    """Every generated table's rows, hashed in a stable order."""
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return tuple(conn.execute(text(
                f"SELECT md5(string_agg(CAST({row} AS text), ',' ORDER BY CAST({row} AS text))) "
                f"FROM public.{table} t")).scalar_one()
                for table, row in _COMPARED.items())
    finally:
        engine.dispose()


def test_a_random_shape_is_drawn_by_the_seed_and_the_same_seed_generates_the_same_rows(server_url, prefix, capsys):
    from bench.random_shape import draw

    def generate(seed):
        assert bench_cli.main(["generate", "--users", "1500", "--shape", "random", "--seed", str(seed),
                               "--as-of", "2026-06-01", "--database-url", server_url, "--prefix", prefix]) == 0
        found = find_dataset(server_url, f"{prefix}_1500_s{seed}_random")
        assert found is not None and found.world == World(1500, seed=seed, as_of=AS_OF, shape="random")
        return found

    try:
        first = generate(3)
        assert capsys.readouterr().out.startswith(f"{prefix}_1500_s3_random: 1,500 users (random shape, seed 3): ")
        rows = _fingerprint(first.url)
        assert generate(3).counts == first.counts and _fingerprint(first.url) == rows
        other = generate(4)
        assert other.counts != first.counts and _fingerprint(other.url) != rows
        assert draw(3) != draw(4)
    finally:
        for seed in (3, 4):
            drop_database(server_url, f"{prefix}_1500_s{seed}_random")


@pytest.mark.slow
def test_every_job_on_a_random_shape_does_the_bounds_work_first_rerun_and_daily(server_url, prefix, tmp_path, capsys):
    from bench.random_shape import draw

    seed, json_path = 5, tmp_path / "random.json"
    try:
        code = bench_cli.main(["run", "--users", "1500", "--shape", "random", "--seed", str(seed),
                               "--as-of", "2026-06-01", "--database-url", server_url, "--prefix", prefix,
                               "--json", str(json_path)])
        assert code == 0
    finally:
        drop_database(server_url, f"{prefix}_1500_s{seed}_random")
    [size] = json.loads(json_path.read_text())["sizes"]
    assert size["world"]["shape"] == "random" and size["world"]["seed"] == seed
    assert {name: size["shape"][name] for name in draw(seed).as_json()} == draw(seed).as_json()  # recorded
    done = {job["job"]: report._rows_done(job["first"]) for job in size["jobs"]}
    assert done == {job["job"]: job["bound"]["rows"] for job in size["jobs"]}
    assert done["recurring-rewards"] > 0 and done["level2-rewards"] > 0
    daily = {entry["job"]: entry for entry in size["daily"]["jobs"]}
    assert {job: report._rows_done(entry["run"]) for job, entry in daily.items()} == \
        {job: entry["bound"]["rows"] for job, entry in daily.items()}
    reports = ("expiring-soon", "reconcile")
    assert {report._rows_done(job["rerun"]) for job in size["jobs"] if job["job"] not in reports} == {0}
    printed = capsys.readouterr().out
    assert "shape drawn: unreferred_share=" in printed
    assert report.worst([size])["recurring-rewards"]["rows_equal"] is True
