"""Where a job spends its time: run it in-process on a clone of a dataset and time every SQL statement.

`python -m bench profile JOB --users N` clones the dataset, runs the jobs before JOB in the pipeline
(untimed, so the state is the one `bench run` measures), then runs JOB with a timer around each
statement, grouped by the statement's first comment line (the named SQL blocks start with one).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import Engine, event

from bench.datasets import Dataset, create_database, drop_database, migrated_engine
from core.runner import run_job
from jobs import PipelineSettings


@dataclass
class StatementTimes:
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    longest: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, label: str, seconds: float) -> None:
        self.calls[label] += 1
        self.seconds[label] += seconds
        self.longest[label] = max(self.longest[label], seconds)

    def rows(self) -> list[tuple[str, int, float, float]]:
        return sorted(((label, self.calls[label], self.seconds[label], self.longest[label])
                       for label in self.calls), key=lambda row: -row[2])


def statement_label(statement: str) -> str:
    """The first comment line of a statement, else its first words."""
    for line in statement.strip().splitlines():
        line = line.strip()
        if line.startswith("--"):
            return line.lstrip("- ")[:70]
        if line:
            return line[:70]
    return "?"


def timed(engine: Engine) -> StatementTimes:
    """Time every statement `engine` runs from now on."""
    times = StatementTimes()

    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        conn.info.setdefault("bench_started", []).append(time.monotonic())

    @event.listens_for(engine, "after_cursor_execute")
    def _stop(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        started = conn.info["bench_started"].pop()
        times.add(statement_label(statement), time.monotonic() - started)

    return times


def profile_job(server: str, dataset: Dataset, job_name: str, *, keep: bool = False,
                progress: Callable[[str], None]) -> tuple[Any, StatementTimes]:
    from jobs import JOBS, PIPELINE

    clone = f"{dataset.name}_prof"
    progress(f"cloning {dataset.name}")
    url = create_database(server, clone, template=dataset.name)
    engine = migrated_engine(url)
    settings = PipelineSettings(_env_file=None, database_url=url)
    try:
        for job in PIPELINE:
            if job.name == job_name:
                break
            progress(f"{job.name} (before, untimed)")
            run_job(job, settings=settings, engine=engine, as_of=dataset.world.as_of)
        progress(f"{job_name}: profiled run")
        times = timed(engine)
        result = run_job(JOBS[job_name], settings=settings, engine=engine, as_of=dataset.world.as_of)
    finally:
        engine.dispose()
        if not keep:
            drop_database(server, clone)
    return result, times


def render(result: Any, times: StatementTimes) -> str:
    lines = [f"{result.job}: {result.status} in {result.seconds:.2f} s, stats {result.stats}", "",
             f"{'statement':70}  {'calls':>6}  {'total s':>8}  {'max s':>7}"]
    for label, calls, seconds, longest in times.rows():
        lines.append(f"{label:70}  {calls:6d}  {seconds:8.2f}  {longest:7.3f}")
    return "\n".join(lines)
