"""The one progress display of the command line: a bar per run, on a terminal only.

While the bar is live, rich takes over stderr and stdout, so a log line (structlog writes to the
current stderr) prints above the bar, whole, never glued to it. The bar is removed when the run
ends; the caller then prints the run's one summary.
"""
from __future__ import annotations

import math
from types import TracebackType
from typing import Callable

from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from cli.terminal import stderr_console


def describe_batches(batches: int, items: int, total: int | None, batch_size: int | None) -> str:
    """`batch 2 of 5, 7,000 of 24,000` when the total is known, else `batch 2, 7,000 done`."""
    if total is None:
        return f"batch {batches:,}, {items:,} done"
    of_batches = f" of {max(1, math.ceil(total / batch_size)):,}" if batch_size else ""
    return f"batch {batches:,}{of_batches}, {items:,} of {total:,}"


class RunProgress:
    """`with RunProgress(job, batch_size=…) as report: run_job(…, progress=report)`."""

    def __init__(self, label: str, *, batch_size: int | None = None) -> None:
        self.label = label
        self.batch_size = batch_size
        self._progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=30),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
            console=stderr_console(), transient=True, redirect_stdout=True, redirect_stderr=True,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> Callable[..., None]:
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=None, detail="starting")
        return self.report

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._progress.stop()

    def report(self, *, job: str, batches: int, items: int, total: int | None) -> None:
        """A `core.job.ProgressReporter`: called after every batch."""
        assert self._task is not None
        detail = describe_batches(batches, items, total, self.batch_size)
        self._progress.update(self._task, completed=items, total=total if total else None, detail=detail)
