"""One short human summary per run, printed when a run started by hand ends."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from core.clock import when
from core.summary import describe_stats


def took(duration: timedelta | float | None) -> str:
    if duration is None:
        return ""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def status_label(status: str, dry_run: bool) -> str:
    return f"{status} (dry run)" if dry_run else status


def run_summary(result: Any) -> str:
    """`expire-pending SUCCEEDED in 0.4s (run 17, as of 2026-06-01 00:00:00Z)` and what it did."""
    dry_run = bool(result.stats.get("dry_run"))
    line = (f"{result.job} {status_label(result.status, dry_run)} in {took(result.seconds)} "
            f"(run {result.run_id}, as of {when(result.as_of)})")
    details = describe_stats(result.stats)
    if details:
        line += f"\n  {details}"
    if result.error:
        line += f"\n  error: {result.error}"
    return line
