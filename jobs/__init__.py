"""The job registry shared by the CLI and the daemon, in pipeline order."""
from __future__ import annotations

from core.job import Job
from jobs import expire_pending

PIPELINE: tuple[Job, ...] = (
    expire_pending.JOB,
)

JOBS: dict[str, Job] = {job.name: job for job in PIPELINE}
