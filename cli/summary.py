"""What a person reads of a run: one short summary printed when a run started by hand ends, and a run's
stats as words for `history`, `show` and the demo.

Each job names its own stats keys (`Job.stats_labels`: the label a person reads, in the order told,
what changed first; None for bookkeeping left to `show`); this module knows no job's key. It renders
the keys every run shares: the ledger writer's rows and points, a job turned off by its settings, a
dry run, and hides the batch loop's bookkeeping. Keys a job does not label follow in alphabetical
order, so nothing is hidden; no value is ever shown as a Python repr.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

from core.clock import when

# Labels: a job's stats keys and what a person reads for each (None: bookkeeping, left to `show`).
Labels = Mapping[str, str | None]

_LEDGER = ("rows_written", "points_written")  # core.ledger's writer, through RunContext.record_points
_SHARED_BOOKKEEPING = frozenset({"batches", "items", "dry_run", "max_batch_seconds", "disabled"})


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
    details = describe_stats(result.stats, job=result.job)
    if details:
        line += f"\n  {details}"
    if result.error:
        line += f"\n  error: {result.error}"
    return line


# ── a run's stats as words ───────────────────────────────────────────────────

def stats_labels(job: str | None) -> Labels:
    """The labels the registered job `job` declares; for a job no longer registered (or none named),
    every registered job's, the first job's label winning."""
    from jobs import JOBS, PIPELINE  # the job modules, only once a run's stats are told

    if job in JOBS:
        return JOBS[job].stats_labels
    merged: dict[str, str | None] = {}
    for each in PIPELINE:
        for key, label in each.stats_labels.items():
            merged.setdefault(key, label)
    return merged


def describe_stats(stats: dict[str, Any] | None, *, job: str | None, brief: bool = False) -> str:
    """One line of the run of `job`; `brief` leaves out counts that are zero (`history`, the demo)."""
    return describe_with_labels(stats, stats_labels(job) if stats else {}, brief=brief)


def describe_with_labels(stats: dict[str, Any] | None, labels: Labels, *, brief: bool = False) -> str:
    """One line: the ledger's rows, then the labelled keys in their order, then any other key."""
    if not stats:
        return ""
    parts = []
    if stats.get("disabled"):
        parts.append("job turned off by its settings")
    ledger = describe_ledger(stats)
    if ledger:
        parts.append(ledger)
    for key, label in labels.items():
        if label is not None and key in stats and not (brief and stats[key] in (0, None)):
            parts.append(f"{_number(stats[key])} {label}")
    for key in sorted(set(stats) - set(labels) - set(_LEDGER) - _SHARED_BOOKKEEPING):
        value = stats[key]
        if not (brief and value in (0, None, {}, "")):
            separator = ": " if isinstance(value, (dict, list, tuple)) else " "
            parts.append(f"{key.replace('_', ' ')}{separator}{as_words(value)}")
    if stats.get("dry_run"):
        parts.insert(0, "dry run, nothing changed")
    return "; ".join(parts) if parts else "nothing to do"


def describe_ledger(stats: dict[str, Any]) -> str:
    """`wrote 3 EXPIRY rows (-1,200 points)`, or `would write …` in a dry run; '' when nothing."""
    rows: dict[str, int] = stats.get("rows_written") or {}
    points: dict[str, int] = stats.get("points_written") or {}
    kinds = [kind for kind in sorted(rows) if rows[kind]]
    if not kinds:
        return ""
    verb = "would write" if stats.get("dry_run") else "wrote"
    parts = [f"{_number(rows[kind])} {kind} rows ({_number(points.get(kind, 0))} points)" for kind in kinds]
    return f"{verb} " + ", ".join(parts)


def as_words(value: Any) -> str:
    """A stat's value as a person reads it, never a Python repr: a list as `a, b`, a mapping as
    `name value, …`, a mapping of runs (`{"run_id": 4, …}`) as `name run 4`."""
    if isinstance(value, dict):
        return ", ".join(f"{name} {_entry(entry)}" for name, entry in sorted(value.items())) or "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(as_words(item) for item in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _number(value)


def _entry(value: Any) -> str:
    if isinstance(value, dict) and "run_id" in value:
        return f"run {value['run_id']}"
    if isinstance(value, (dict, list, tuple)):
        return f"({as_words(value)})"
    return as_words(value)


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
