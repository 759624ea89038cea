"""Prometheus metrics of the runs of this process (prometheus-client's default registry)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

JOB_RUNS = Counter("rewards_job_runs_total", "Job runs by final status", ["job", "status"])
JOB_DURATION = Histogram(
    "rewards_job_duration_seconds", "Wall time of a job run", ["job"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, float("inf")),
)
POINTS_WRITTEN = Counter("rewards_points_written_total", "Points written to the ledger", ["job", "type"])


def observe_run(job: str, status: str, seconds: float, stats: dict, *, dry_run: bool) -> None:
    JOB_RUNS.labels(job=job, status=status).inc()
    JOB_DURATION.labels(job=job).observe(seconds)
    if not dry_run:
        for kind, points in stats.get("points_written", {}).items():
            POINTS_WRITTEN.labels(job=job, type=kind).inc(abs(points))
