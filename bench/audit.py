"""`python -m bench audit`: what the rules audit costs in reconcile (issue 24), against its bound.

On a clone of a dataset, the pipeline's ledger writers run first through the CLI (untimed: they give the
audit real rewards, clawbacks and expiries to check). Then, timed: the BOUND, the reconcile comparison as
one statement (bench/bounds.sql) plus the audit's own statements (jobs/rules_audit.sql), each run once
as a single statement in one REPEATABLE READ snapshot; and the JOB, `scheduler.py run reconcile` (the
audit, the roll-forward, the files and the run's records). The target: the job at most 1.5x the bound.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.datasets import Dataset, create_database, drop_database, migrated_engine
from bench.run import Progress, run_bound, run_cli
from jobs import PipelineSettings
from jobs import rules_audit

WRITERS = ("expire-pending", "recurring-rewards", "level2-rewards", "expire-points")
MAX_RECONCILE_TO_BOUND = 1.5


def measure(server: str, dataset: Dataset, *, progress: Progress) -> dict[str, Any]:
    world = dataset.world
    measured = f"{dataset.name}_audit"
    progress(f"cloning {dataset.name}")
    url = create_database(server, measured, template=dataset.name)
    engine = migrated_engine(url)
    settings = PipelineSettings(_env_file=None)
    try:
        with tempfile.TemporaryDirectory(prefix="rewards-bench-audit-") as tmp:
            workdir = Path(tmp)
            for job in WRITERS:
                progress(f"{job}: run (untimed, the audit's material)")
                assert run_cli(url, job, world.as_of, workdir, engine).exit_code == 0, job
            load = round(os.getloadavg()[0], 2)
            progress("reconcile: bound (comparison statement + the audit's statements)")
            comparison = run_bound(engine, "reconcile", settings, world.as_of)
            with engine.connect() as conn:
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.exec_driver_sql("SET LOCAL jit = off")
                started = time.monotonic()
                findings = rules_audit.audit(conn, settings)
                audit_seconds = time.monotonic() - started
                conn.rollback()
            progress("reconcile: job")
            job = run_cli(url, "reconcile", world.as_of, workdir, engine)
    finally:
        engine.dispose()
        drop_database(server, measured)
    bound = comparison.seconds + audit_seconds
    return {"users": world.users, "load_average_before": load, "load_average": round(os.getloadavg()[0], 2),
            "comparison_bound_seconds": comparison.seconds, "audit_statements_seconds": round(audit_seconds, 3),
            "bound_seconds": round(bound, 3), "job_seconds": job.run_seconds, "job_wall_seconds": job.wall_seconds,
            "peak_rss_mb": job.peak_rss_mb, "findings": len(findings), "job_status": job.status,
            "job_to_bound": round(job.run_seconds / bound, 2) if job.run_seconds and bound else None,
            "target": MAX_RECONCILE_TO_BOUND}
