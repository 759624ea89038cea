"""Short human descriptions of a run's stats, for terminals, `history`, `show` and the demo.

Stats appear in one fixed order (what changed first, then what was looked at, then checks), each
with a label a person reads; internal bookkeeping (cursors, scan bounds, batch timings) is left to
`show`. Keys this module does not know yet follow, in alphabetical order, so nothing is hidden.
"""
from __future__ import annotations

from typing import Any

# (stats key, label): printed as "<number> <label>".
_COUNTS: tuple[tuple[str, str], ...] = (
    ("relationships_expired", "relationships expired"),
    ("users_expired", "users' points expired"),
    ("clawed_back_points", "points clawed back"),
    ("expired_before_clawback_points", "points of clawed-back rewards already expired"),
    ("unrecovered_points", "points unrecovered"),
    ("recovered_points", "unrecovered points recovered"),
    ("skipped_feed_rows", "payments feed rows skipped"),
    ("skipped_unstorable", "rows too large for the ledger, skipped"),
    ("conflicting_keys", "reward keys held in the ledger with another amount"),
    ("too_large", "rewards too large to write"),
    ("discrepancies", "discrepancies"),
    ("findings", "rules audit findings"),
    ("repaired", "cache rows repaired"),
    ("net_drift", "points net drift"),
    ("roll_forward_gap", "points roll-forward gap"),
    ("outstanding_points", "points outstanding"),
    ("relationships_scanned", "relationships scanned"),
    ("referred_users_to_write", "referred users with rows to write"),
    ("users_checked", "users checked"),
    ("users_to_expire", "users with points due"),
    ("skipped_missing_rewarded_at", "skipped without rewarded_at"),
    ("backfilled_rows", "back-filled rows"),
)
_LEDGER = ("rows_written", "points_written")
BOOKKEEPING = frozenset({
    "batches", "items", "cutoff", "dry_run", "max_batch_seconds", "scan", "scan_from", "scan_floor",
    "high_water_as_of", "since", "report", "files", "discrepancies_by_kind", "earned_rows_before_cutoff",
    "disabled", "invariant_violations",
})
_KNOWN = {key for key, _label in _COUNTS} | set(_LEDGER) | BOOKKEEPING


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


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


def describe_stats(stats: dict[str, Any] | None, *, brief: bool = False) -> str:
    """One line; `brief` leaves out counts that are zero (for `history` and the demo)."""
    if not stats:
        return ""
    parts = []
    if stats.get("disabled"):
        parts.append("job turned off by its settings")
    ledger = describe_ledger(stats)
    if ledger:
        parts.append(ledger)
    for key, label in _COUNTS:
        if key in stats and not (brief and stats[key] in (0, None)):
            parts.append(f"{_number(stats[key])} {label}")
    for key in sorted(set(stats) - _KNOWN):
        value = stats[key]
        if not (brief and value in (0, None, {}, "")):
            separator = ": " if isinstance(value, (dict, list, tuple)) else " "
            parts.append(f"{key.replace('_', ' ')}{separator}{as_words(value)}")
    if stats.get("dry_run"):
        parts.insert(0, "dry run, nothing changed")
    return "; ".join(parts) if parts else "nothing to do"
