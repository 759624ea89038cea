"""The job registry, in pipeline order, each job with its default schedule; and the settings it makes.

A job registers here: its module's `JOB` and its default cron (UTC) in `_REGISTERED`. Each
registered job gets a `REWARDS_SCHEDULE_<JOB>` setting (`Settings`), and the face hands `PIPELINE`
to the daemon and the demo; core never looks the registry up.
"""
from __future__ import annotations

from typing import Any

from core import settings as core_settings
from core.job import Job
from jobs import expire_pending, expire_points, expiring_soon, level2_rewards, reconcile, recurring_rewards
from jobs.settings import RuleSettings

# Daily, a few minutes apart in pipeline order: each job sees what the ones before it wrote.
_REGISTERED: tuple[tuple[Job, str], ...] = (
    (expire_pending.JOB, "5 0 * * *"),
    (recurring_rewards.JOB, "15 0 * * *"),
    (level2_rewards.JOB, "30 0 * * *"),
    (expire_points.JOB, "45 0 * * *"),
    (expiring_soon.JOB, "50 0 * * *"),
    (reconcile.JOB, "0 1 * * *"),
)

PIPELINE: tuple[Job, ...] = tuple(job for job, _schedule in _REGISTERED)
JOBS: dict[str, Job] = {job.name: job for job in PIPELINE}
DEFAULT_SCHEDULES: dict[str, str] = {job.name: schedule for job, schedule in _REGISTERED}

# Every setting: the machinery's, the rules', and one schedule per registered job.
Settings = core_settings.with_schedules(RuleSettings, DEFAULT_SCHEDULES)


def load_settings(**overrides: Any) -> RuleSettings:
    """Read and validate every setting; raise `ConfigError` naming the first bad variable."""
    return core_settings.load_settings(Settings, **overrides)
