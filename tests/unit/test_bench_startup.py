"""`python -m bench startup`: each command timed as its own process, medians rendered with the load."""
from __future__ import annotations

import os

import pytest

from bench import startup


def test_each_command_is_timed_in_its_own_process_and_a_failing_one_is_reported(tmp_path):
    [timing] = startup.measure(dict(os.environ), tmp_path, runs=3, commands=(("--help",),))

    assert timing.command == "--help" and len(timing.cpu) == len(timing.wall) == 3
    assert all(cpu > 0 for cpu in timing.cpu) and all(wall > 0 for wall in timing.wall)
    with pytest.raises(RuntimeError, match="scheduler.py no-such-command exited 2"):
        startup.run_once(("no-such-command",), dict(os.environ), tmp_path)


def test_the_table_gives_medians_the_range_the_target_and_the_load():
    timings = [startup.Timing("health", cpu=[0.25, 0.20, 0.40], wall=[0.3, 0.2, 0.5]),
               startup.Timing("jobs", cpu=[0.31, 0.35, 0.33], wall=[0.4, 0.4, 0.4])]

    text = startup.render(timings, load_before=1.5, load_after=2.25, runs=3)

    assert "load average 1.50 before, 2.25 after" in text
    assert "| `health` | 0.250 | 0.200–0.400 | 0.300 | 0.200 | ≤ 0.3 s CPU: yes |" in text
    assert "| `jobs` | 0.330 | 0.310–0.350 | 0.400 | 0.400 | ≤ 0.3 s CPU: NO |" in text


def test_the_idle_run_is_judged_by_its_wall_time():
    idle = " ".join(startup.IDLE_RUN)
    fast_cpu_slow_wall = startup.Timing(idle, cpu=[0.2, 0.2, 0.2], wall=[0.35, 0.32, 0.5])
    assert f"| `{idle}` | 0.200 | 0.200–0.200 | 0.350 | 0.320 | ≤ 0.3 s wall: NO |" in startup.render(
        [fast_cpu_slow_wall], load_before=0, load_after=0, runs=3)
    fast = startup.Timing(idle, cpu=[0.2, 0.2, 0.2], wall=[0.25, 0.3, 0.29])
    assert "≤ 0.3 s wall: yes |" in startup.render([fast], load_before=0, load_after=0, runs=3)


def test_the_idle_run_is_read_against_the_floor_of_the_stacks_imports(tmp_path):
    [floor] = startup.measure(dict(os.environ), tmp_path, runs=1, commands=(startup.FLOOR,))
    assert floor.median_cpu > 0
    idle = startup.Timing(" ".join(startup.IDLE_RUN), cpu=[0.5], wall=[0.65])
    stack = startup.Timing(" ".join(startup.FLOOR), cpu=[0.4], wall=[0.45])
    text = startup.render([idle, stack], load_before=0.5, load_after=0.5, runs=1)
    assert "the floor under any run" in text
    assert "The idle run's wall time is 1.44× the floor's (0.650 s against 0.450 s)" in text
