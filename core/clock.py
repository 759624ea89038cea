"""Business time: UTC instants, and the `--as-of` forms SPEC.md accepts."""
from __future__ import annotations

from datetime import date, datetime, time, timezone


# Jobs look back up to a century from an as-of and forward a few months (expiring-soon, reports): an
# instant near datetime's limits (year 1 or 9999) would overflow, and no real run needs one.
EARLIEST_AS_OF = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST_AS_OF_YEAR = 2200


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def parse_as_of(text: str) -> datetime:
    """ISO-8601 to a UTC instant: a bare date is 00:00 UTC, a time without offset is UTC,
    an offset is converted to UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            parsed = datetime.combine(date.fromisoformat(value), time(0), tzinfo=timezone.utc)
        else:
            parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO-8601 date or date-time: {text!r} (like 2026-06-01 or 2026-06-01T00:00:00Z)") from None
    outside = ValueError(f"{text!r} is outside the years {EARLIEST_AS_OF.year} to {LATEST_AS_OF_YEAR}")
    try:
        instant = parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)
    except OverflowError:  # an offset that moves it past year 1 or 9999
        raise outside from None
    if instant < EARLIEST_AS_OF or instant.year > LATEST_AS_OF_YEAR:
        raise outside
    return instant


def utc_iso(moment: datetime) -> str:
    """An instant as ISO-8601 in UTC (`2026-06-01T00:00:00+00:00`), as reports and stats store it."""
    return moment.astimezone(timezone.utc).isoformat()


def when(moment: datetime | str | None, *, seconds: bool = True, zone: str = "Z") -> str:
    """An instant as people read it, in UTC: `2026-06-01 00:05:00Z`, or `2026-06-01 00:05` without
    seconds; `zone` is the suffix after the seconds. Takes ISO-8601 text too; '' for None."""
    if moment is None:
        return ""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime(f"%Y-%m-%d %H:%M:%S{zone}" if seconds else "%Y-%m-%d %H:%M")
