"""Text for people and logs that must stay on one line."""
from __future__ import annotations


def one_line(error: BaseException, *, driver_message: bool = False) -> str:
    """`TypeName: the first line of its message`, for a log field or a run's error column.

    With `driver_message`, a database error reads as the driver's own message, without SQLAlchemy's
    `(psycopg2.errors.X)` prefix (the type name stays SQLAlchemy's)."""
    source = getattr(error, "orig", None) if driver_message else None
    lines = str(source or error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
