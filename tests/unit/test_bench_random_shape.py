"""`--shape random` (issue 26): the shape is a pure function of the seed, every parameter within its
range, the seeds spread over the ranges, and the report's worst-ratio summary picks the worst dataset."""
from __future__ import annotations

import pytest

from bench import report
from bench.random_shape import RANGES, RandomShape, draw, field_names
from bench.random_world import ledger_plan, sample_shape
from cli import sample_data


def test_the_same_seed_draws_the_same_shape_and_other_seeds_other_shapes():
    assert draw(7) == draw(7)
    assert len({draw(seed) for seed in range(50)}) == 50


def test_every_parameter_of_every_seed_lies_within_its_range_and_integers_stay_integers():
    for seed in range(500):
        shape = draw(seed).as_json()
        for name, (low, high) in RANGES.items():
            assert low <= shape[name] <= high, (seed, name, shape[name])
            if isinstance(low, int) and isinstance(high, int):
                assert isinstance(shape[name], int), (seed, name)


def test_over_many_seeds_each_parameter_reaches_both_ends_of_its_range():
    """Wide ranges, really drawn: over 500 seeds every parameter comes within a tenth of its range of
    each end (a log-scale one within a tenth of the log range), so a few seeds meet very different worlds."""
    shapes = [draw(seed).as_json() for seed in range(500)]
    for name, (low, high) in RANGES.items():
        values = [shape[name] for shape in shapes]
        margin = (high - low) / 10
        if low > 0 and high / low > 20:  # drawn on a log scale
            assert min(values) <= low * (high / low) ** 0.1 and max(values) >= high / (high / low) ** 0.1, name
        else:
            assert min(values) <= low + margin and max(values) >= high - margin, name


def test_the_shape_has_a_range_for_every_field_and_its_sql_parameters_are_prefixed():
    assert field_names() == list(RANGES)
    params = draw(3).params()
    assert set(params) == {f"s_{name}" for name in RANGES}


def test_the_drawn_shape_gives_sample_datas_planning_and_payments_every_parameter_they_take():
    shape = draw(3)
    planned = sample_shape(shape)
    assert set(planned) == set(sample_data.DEFAULT_SHAPE)
    assert planned["failure_rate"] == shape.failure_rate and planned["cycle_share"] == shape.self_referral_share
    assert (planned["activated_from"], planned["activated_to"]) == (0.0, shape.activated_share)


@pytest.mark.parametrize("rows", [1.0, 7.5, 50.0])
def test_the_ledger_plan_aims_at_the_drawn_rows_per_user(rows):
    shape = RandomShape(**{**draw(11).as_json(), "ledger_rows_per_user": rows, "grant_share": 0.5})
    plan = ledger_plan(shape)
    referred = 0.98 * (1 - shape.unreferred_share)
    earnings = referred * shape.activated_share * (1 + shape.rewarded_share) + plan["grants_mean"]
    assert plan["grants_mean"] == pytest.approx(rows / 4, abs=1e-3)
    assert earnings * (1 + plan["redemptions_per_earning"]) == pytest.approx(max(rows, earnings), rel=1e-3)


def _size(users, seed, first, rerun, daily, rows=(10, 10)):
    job = {"job": "recurring-rewards", "job_to_bound": first, "rerun_to_first": rerun,
           "bound": {"rows": rows[0]}, "first": {"status": "SUCCEEDED", "stats": {"rows_written": {"a": rows[1]}}}}
    day = {"job": "recurring-rewards", "to_bound": daily, "bound": {"rows": 3},
           "run": {"status": "SUCCEEDED", "stats": {"rows_written": {"a": 3}}}}
    return {"users": users, "world": {"seed": seed, "shape": "random"}, "jobs": [job], "daily": {"jobs": [day]}}


def test_the_worst_summary_keeps_each_ratio_of_its_worst_dataset_and_flags_unequal_rows():
    sizes = [_size(200_000, 1, 1.1, 0.05, 1.6), _size(200_000, 2, 1.4, 0.02, 0.9),
             _size(600_000, 1, 0.9, 0.25, 1.0, rows=(10, 9))]
    [entry] = report.worst(sizes).values()
    assert entry["first"] == (1.4, "200k/2") and entry["daily"] == (1.6, "200k/1")
    assert entry["rerun"] == (0.25, "600k/1") and entry["runs"] == 3
    assert entry["rows_equal"] is False
    [row] = report.worst_rows(sizes)
    assert row[2] == "1.40 (200k/2) NO" and row[5] == "NO"
    assert report.worst(sizes[:2])["recurring-rewards"]["rows_equal"] is True
