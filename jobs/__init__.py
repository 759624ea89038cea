"""The job registry, in pipeline order, each job with its default schedule; and the settings it makes.

A job registers here: its name, its module under `jobs/` (which defines `JOB`) and its default cron
(UTC) in `_REGISTERED`. Each registered job gets a `REWARDS_SCHEDULE_<JOB>` setting (`PipelineSettings`), and
the face hands `PIPELINE` to the daemon and the demo; core never looks the registry up.

The job modules (and the database stack they import) load on first use of `PIPELINE` or `JOBS`:
`--help`, `jobs`, `health` and the settings need only the names and schedules (`NAMES`,
`DEFAULT_SCHEDULES`), and start without them.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from core import settings as core_settings
from jobs.settings import RuleSettings

if TYPE_CHECKING:
    from core.job import Job

    PIPELINE: tuple[Job[RuleSettings], ...]
    JOBS: dict[str, Job[RuleSettings]]

# Daily, a few minutes apart in pipeline order: each job sees what the ones before it wrote.
_REGISTERED: tuple[tuple[str, str, str], ...] = (
    ("expire-pending", "expire_pending", "5 0 * * *"),
    ("recurring-rewards", "recurring_rewards", "15 0 * * *"),
    ("level2-rewards", "level2_rewards", "30 0 * * *"),
    ("expire-points", "expire_points", "45 0 * * *"),
    ("expiring-soon", "expiring_soon", "50 0 * * *"),
    ("reconcile", "reconcile", "0 1 * * *"),
)

NAMES: tuple[str, ...] = tuple(name for name, _module, _schedule in _REGISTERED)
DEFAULT_SCHEDULES: dict[str, str] = {name: schedule for name, _module, schedule in _REGISTERED}

# Every setting: the machinery's, the rules', and one schedule per registered job. A class built at run
# time from `_REGISTERED`, so the type checker knows it as `RuleSettings` (what the jobs read).
PipelineSettings = core_settings.with_schedules(RuleSettings, DEFAULT_SCHEDULES, name="PipelineSettings")


def load_settings(**overrides: object) -> RuleSettings:
    """Read and validate every setting; raise `ConfigError` naming the first bad variable."""
    return core_settings.load_settings(PipelineSettings, **overrides)


def _registered_job(name: str, module: str) -> Job[RuleSettings]:
    job: Job[RuleSettings] = import_module(f"{__name__}.{module}").JOB
    if job.name != name:
        raise RuntimeError(f"jobs/{module}.py defines the job {job.name!r}, registered as {name!r}")
    return job


def job_named(name: str) -> Job[RuleSettings]:
    """One registered job by name, its module alone loaded (`run JOB`: an idle run does not pay for the
    other jobs' modules); KeyError for a name not registered."""
    modules = {registered: module for registered, module, _schedule in _REGISTERED}
    return _registered_job(name, modules[name])


def __getattr__(attribute: str) -> object:
    """`PIPELINE` (the jobs in order) and `JOBS` (by name), built once, when first asked for."""
    if attribute not in ("PIPELINE", "JOBS"):
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    pipeline = tuple(_registered_job(name, module) for name, module, _schedule in _REGISTERED)
    globals().update(PIPELINE=pipeline, JOBS={job.name: job for job in pipeline})
    return globals()[attribute]
