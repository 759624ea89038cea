"""Short human descriptions of a run's stats, for terminals and `history`."""
from __future__ import annotations

from typing import Any

_QUIET = {"batches", "items", "cutoff", "dry_run", "max_batch_seconds"}


def describe_stats(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    parts = []
    prefix = "would write " if stats.get("dry_run") else ""
    for key, value in stats.items():
        if key in _QUIET:
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{kind} {amount}" for kind, amount in sorted(value.items()))
            parts.append(f"{prefix if key.endswith('_written') else ''}{key.replace('_', ' ')}: {inner or 'none'}")
        else:
            parts.append(f"{key.replace('_', ' ')}: {value}")
    if stats.get("dry_run"):
        parts.append("dry run, nothing changed")
    return "; ".join(parts)
