"""Business time: UTC instants, and the `--as-of` forms SPEC.md accepts."""
from __future__ import annotations

from datetime import date, datetime, time, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def parse_as_of(text: str) -> datetime:
    """ISO-8601 to a UTC instant: a bare date is 00:00 UTC, a time without offset is UTC,
    an offset is converted to UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(0), tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or date-time: {text!r} (like 2026-06-01 or 2026-06-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
