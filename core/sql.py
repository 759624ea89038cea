"""Named SQL statements kept in `.sql` files, procrastinate-style.

A file holds blocks that each start with a line `-- name: some_name --`; the block runs until
the next such line. Code asks for a statement by name, so each statement can be read whole.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

if TYPE_CHECKING:
    from sqlalchemy import TextClause

_BLOCK_START = re.compile(r"^-- name: ([a-z0-9_]+) --\s*$", re.MULTILINE)

# Runs one read-only statement (its text, no parameters) and returns its rows, read by attribute:
# `core.connect.fetcher` over a bare psycopg2 connection, or an engine's (`core.connect.reading`, `fetch_on`).
# Any: a row's columns are named by the SQL text, unknown to the checker.
Fetch = Callable[[str], Sequence[Any]]


@cache
def load_queries(path: str | Path) -> dict[str, str]:
    """Every named statement of a `.sql` file, by name."""
    source = Path(path).read_text(encoding="utf-8")
    pieces = _BLOCK_START.split(source)
    return {name: body.strip() for name, body in zip(pieces[1::2], pieces[2::2], strict=True)}


class Queries:
    """The named statements of the `.sql` file beside a module: `Queries(__file__)`."""

    def __init__(self, module_file: str) -> None:
        self._path = Path(module_file).with_suffix(".sql")

    def raw(self, name: str) -> str:
        return load_queries(self._path)[name]

    def __getitem__(self, name: str) -> TextClause:
        from sqlalchemy import text  # here: a command that only reads raw text starts without SQLAlchemy

        return text(self.raw(name))

    def render(self, name: str, **identifiers: str) -> TextClause:
        """A statement with `{placeholders}` filled by identifiers that were validated and quoted."""
        from sqlalchemy import text

        return text(self.raw(name).format(**identifiers))


_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID_LIST = re.compile(rf"(?:{_UUID}(?:,{_UUID})*)?")


def uuid_array(values: Iterable[object]) -> str:
    """UUIDs as one PostgreSQL array literal, `{a,b,…}`, for a parameter cast to uuid[].

    psycopg2 sends a Python list as `ARRAY['a', 'b', …]`, which the server parses constant by
    constant: 8–10 ms for 5,000 UUIDs; one literal takes half that. Each value must be a UUID in its
    text form, so nothing in a value can end or escape an element."""
    joined = ",".join(str(value) for value in values)
    if not _UUID_LIST.fullmatch(joined):
        raise ValueError("not a list of UUIDs")
    return "{" + joined + "}"
