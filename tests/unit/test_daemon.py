"""The daemon's arithmetic: cron schedules (previous tick, six fields, crontab's Sunday), catch-up,
retry backoff; and the container image's pinned dependencies. (The daemon process:
tests/integration/test_daemon.py.)"""
from __future__ import annotations

import re
import tomllib
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.daemon import RetryPolicy, needs_catch_up, previous_fire_time
from core.settings import ConfigError, cron_trigger
from jobs import DEFAULT_SCHEDULES, load_settings
from jobs import PIPELINE
from tests.builders import utc

REPO = Path(__file__).resolve().parents[2]
JOB_NAMES = [job.name for job in PIPELINE]


@pytest.mark.parametrize("expression, now, expected", [
    ("5 0 * * *", utc(2026, 6, 1, 0, 4, 59), utc(2026, 5, 31, 0, 5)),
    ("5 0 * * *", utc(2026, 6, 1, 0, 5), utc(2026, 6, 1, 0, 5)),  # a tick at now counts
    ("0 0 1 * *", utc(2026, 3, 15, 12), utc(2026, 3, 1)),
    ("0 0 1 1 *", utc(2026, 6, 1), utc(2026, 1, 1)),
    ("*/5 * * * * *", utc(2026, 6, 1, 12, 0, 7) + timedelta(microseconds=300_000), utc(2026, 6, 1, 12, 0, 5)),
    ("0 3 * * 0", utc(2026, 6, 3, 12), utc(2026, 5, 31, 3)),  # crontab's 0 is Sunday (2026-05-31)
    ("0 9-17 * * 1-5", utc(2026, 6, 6, 20), utc(2026, 6, 5, 17)),  # Saturday evening: Friday's last
])
def test_previous_fire_time_is_the_latest_tick_at_or_before_now(expression, now, expected):
    assert previous_fire_time(cron_trigger(expression), now) == expected


def test_previous_fire_time_of_a_cron_that_never_fired_is_none():
    assert previous_fire_time(cron_trigger("0 0 30 2 *"), utc(2026, 6, 1)) is None  # February 30th


def test_schedules_accept_six_fields_and_count_sunday_as_zero_like_crontab(monkeypatch):
    monkeypatch.setenv("REWARDS_SCHEDULE_RECONCILE", "0 3 * * 7")
    monkeypatch.setenv("REWARDS_SCHEDULE_EXPIRE_PENDING", "*/5 * * * * *")
    settings = load_settings(_env_file=None)
    sunday = cron_trigger(settings.schedule_for("reconcile")).get_next_fire_time(None, utc(2026, 6, 3))
    assert sunday == utc(2026, 6, 7, 3) and sunday.weekday() == 6
    every_five = cron_trigger(settings.schedule_for("expire-pending")).get_next_fire_time(None, utc(2026, 6, 3, 0, 0, 1))
    assert every_five == utc(2026, 6, 3, 0, 0, 5)


@pytest.mark.parametrize("bad", ["0 3 * * 8", "0 3 * *", "* * * * * * *", "61 * * * *"])
def test_a_bad_schedule_is_refused_naming_its_variable(monkeypatch, bad):
    monkeypatch.setenv("REWARDS_SCHEDULE_RECONCILE", bad)
    with pytest.raises(ConfigError, match="^REWARDS_SCHEDULE_RECONCILE: "):
        load_settings(_env_file=None)


def test_default_schedules_run_once_a_day_in_pipeline_order():
    ticks = [previous_fire_time(cron_trigger(DEFAULT_SCHEDULES[name]), utc(2026, 6, 2)) for name in JOB_NAMES]
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    assert all(utc(2026, 6, 1) <= tick < utc(2026, 6, 1, 2) for tick in ticks)


def _success(scheduled_for: datetime | None, as_of: datetime) -> SimpleNamespace:
    return SimpleNamespace(scheduled_for=scheduled_for, as_of=as_of)


@pytest.mark.parametrize("last_success, expected", [
    (None, True),
    (_success(utc(2026, 6, 1, 0, 5), utc(2026, 6, 1, 0, 5)), False),   # that tick ran
    (_success(utc(2026, 5, 31, 0, 5), utc(2026, 5, 31, 0, 5)), True),  # only the day before's
    (_success(None, utc(2026, 6, 1, 9)), False),                       # a manual run after the tick
    (_success(None, utc(2026, 6, 1, 0, 4)), True),                     # a manual run before it
    (_success(utc(2026, 5, 31, 0, 5), utc(2026, 6, 1, 0, 5)), False),  # a catch-up as of the tick
])
def test_catch_up_when_no_success_covers_the_previous_tick(last_success, expected):
    assert needs_catch_up(last_success, utc(2026, 6, 1, 0, 5)) is expected


def test_retry_delays_double_from_the_base_up_to_the_cap_with_jitter_between_half_and_all():
    policy = RetryPolicy(base_seconds=30, max_seconds=200, attempts=9)
    assert [policy.delay(n, rng=lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [15, 30, 60, 100, 100]
    assert [policy.delay(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [30, 60, 120, 200, 200]
    assert policy.delay(2, rng=lambda: 0.5) == 45


def test_retries_stop_after_the_attempts_and_never_go_past_the_next_tick():
    policy = RetryPolicy(base_seconds=30, max_seconds=900, attempts=3)
    now = utc(2026, 6, 1, 0, 5)
    assert policy.next_retry(1, now, None, rng=lambda: 1.0) == now + timedelta(seconds=30)
    assert policy.next_retry(3, now, None, rng=lambda: 1.0) == now + timedelta(seconds=120)
    assert policy.next_retry(4, now, None, rng=lambda: 1.0) is None
    assert policy.next_retry(2, now, now + timedelta(seconds=60), rng=lambda: 1.0) is None  # 60 s: at the tick
    assert policy.next_retry(2, now, now + timedelta(seconds=61), rng=lambda: 1.0) == now + timedelta(seconds=60)


def test_every_runtime_dependency_is_pinned_for_the_container_image():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = (REPO / "requirements.lock").read_text()

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    requirements = [line for line in lock.splitlines() if line and not line.startswith((" ", "#"))]
    pinned = {canonical(line.split("==")[0]) for line in requirements}
    names = {canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]) for requirement in declared}
    assert names - pinned == set()
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+ \\", line) for line in requirements)
    assert lock.count("--hash=sha256:") >= len(requirements)  # pip install --require-hashes
    assert "pixeltable" not in lock and "pytest" not in lock  # no embedded database, no test tools
