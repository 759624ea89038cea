"""The job registry shared by the CLI and the daemon, in pipeline order."""
from __future__ import annotations

from core.job import Job
from jobs import expire_pending, expire_points, expiring_soon, level2_rewards, reconcile, recurring_rewards

PIPELINE: tuple[Job, ...] = (
    expire_pending.JOB,
    recurring_rewards.JOB,
    level2_rewards.JOB,
    expire_points.JOB,
    expiring_soon.JOB,
    reconcile.JOB,
)

JOBS: dict[str, Job] = {job.name: job for job in PIPELINE}
