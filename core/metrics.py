"""Prometheus metrics of the runs of this process (prometheus-client's default registry), and the
last success of each job, read from `job_runs` at scrape time so that every replica reports the same."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING
from collections.abc import Iterator, Sequence

import structlog
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from core.job import Stats

JOB_RUNS = Counter("rewards_job_runs_total", "Job runs by final status", ["job", "status"])
JOB_DURATION = Histogram(
    "rewards_job_duration_seconds", "Wall time of a job run", ["job"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, float("inf")),
)
POINTS_WRITTEN = Counter("rewards_points_written_total", "Points written to the ledger", ["job", "type"])


def observe_run(job: str, status: str, seconds: float, stats: Stats, *, dry_run: bool) -> None:
    JOB_RUNS.labels(job=job, status=status).inc()
    JOB_DURATION.labels(job=job).observe(seconds)
    if not dry_run:
        for kind, points in stats.get("points_written", {}).items():
            POINTS_WRITTEN.labels(job=job, type=kind).inc(abs(points))


class LastSuccessCollector(Collector):
    """`rewards_job_last_success_timestamp_seconds{job}`: when the job's last non-dry run succeeded
    (0 if it never did). Left out of a scrape while the database does not answer, and while an earlier
    scrape still waits for it (a database that hangs holds one scrape's thread, never one per scrape)."""

    NAME = "rewards_job_last_success_timestamp_seconds"
    HELP = "Unix time the job last finished a successful (non-dry) run, 0 if never"

    def __init__(self, engine: Engine, jobs: Sequence[str]) -> None:
        self.engine, self.jobs = engine, tuple(jobs)
        self._reading = threading.Lock()

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["job"])
        yield GaugeMetricFamily(VIOLATIONS_NAME, VIOLATIONS_HELP, labels=["kind"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not self._reading.acquire(blocking=False):
            return
        try:
            yield from self._read()
        finally:
            self._reading.release()

    def _read(self) -> Iterator[GaugeMetricFamily]:
        from core import runs

        try:
            successes = runs.last_successes(self.engine)
        except SQLAlchemyError as error:
            structlog.get_logger("rewards.metrics").warning(
                "last successes unavailable", action="metrics_database_unavailable", error=type(error).__name__)
            return
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["job"])
        for job in self.jobs:
            success = successes.get(job)
            family.add_metric([job], success.finished_at.timestamp() if success else 0.0)
        yield family
        yield from _invariant_violations(self.engine)


VIOLATIONS_NAME = "rewards_invariant_violations"
VIOLATIONS_HELP = "Findings of the latest rules audit, by kind of invariant"


def _invariant_violations(engine: Engine) -> Iterator[GaugeMetricFamily]:
    """`rewards_invariant_violations{kind}`: what the latest successful run that audits the rules counted
    (its stats' `invariant_violations`); absent until one ran."""
    from core import runs

    try:
        by_kind = runs.last_invariant_violations(engine)
    except SQLAlchemyError:
        return
    if by_kind is None:
        return
    family = GaugeMetricFamily(VIOLATIONS_NAME, VIOLATIONS_HELP, labels=["kind"])
    for kind, count in sorted(by_kind.items()):
        family.add_metric([kind], float(count))
    yield family
