"""A query's rows, streamed in chunks with flat memory, through `COPY (query) TO STDOUT`.

A server-side cursor (`DECLARE`, SQLAlchemy's `stream_results`) also streams, but PostgreSQL never
plans a cursor's query with parallel workers; COPY plans it as one whole statement, so a large
aggregate keeps the parallel plan a plain execute gets. COPY takes no bound parameters, so psycopg2
quotes the values into the text (`mogrify`, what its `execute` does anyway). Values arrive as text
(NULL as None) for the caller to convert.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, cast

from sqlalchemy import Connection, TextClause

if TYPE_CHECKING:
    import psycopg2.extensions

# What COPY's text format escapes (it never writes octal or hex sequences).
_ESCAPED = re.compile(r"\\(.)")
_UNESCAPED = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def copy_rows(conn: Connection, statement: TextClause, params: Mapping[str, object],
              on_chunk: Callable[[list[tuple[str | None, ...]]], None], chunk_size: int) -> None:
    """Run the SELECT `statement` with `params` on `conn` (in its transaction) and hand its rows to
    `on_chunk`, `chunk_size` at a time (the last chunk may be shorter; none for no rows). An error
    raised by `on_chunk` ends the stream: the rest is read and dropped, so the connection stays
    usable, and the error is raised."""
    compiled = statement.compile(dialect=conn.dialect)
    sink = _ChunkedRows(on_chunk, chunk_size)
    dbapi_connection = cast("psycopg2.extensions.connection", conn.connection.dbapi_connection)  # the driver
    with dbapi_connection.cursor() as cursor:
        query = cursor.mogrify(str(compiled).strip().rstrip(";"), compiled.construct_params(params)).decode()
        cursor.copy_expert(f"COPY ({query}) TO STDOUT", sink)
    sink.finish()


class _ChunkedRows:
    """The file COPY writes to: complete lines are parsed into rows and handed on in chunks."""

    def __init__(self, on_chunk: Callable[[list[tuple[str | None, ...]]], None], chunk_size: int) -> None:
        self._on_chunk = on_chunk
        self._chunk_size = chunk_size
        self._partial = ""
        self._rows: list[tuple[str | None, ...]] = []
        self._error: BaseException | None = None

    def write(self, data: str | bytes) -> None:
        if self._error is not None:
            return
        text = data.decode() if isinstance(data, bytes) else data
        lines = (self._partial + text if self._partial else text).split("\n")
        self._partial = lines.pop()
        self._rows.extend(map(_parsed, lines))  # psycopg2 writes row by row: the per-call cost counts
        if len(self._rows) >= self._chunk_size:
            self._hand_on(full_chunks_only=True)

    def finish(self) -> None:
        if self._error is None:
            self._hand_on(full_chunks_only=False)
        if self._error is not None:
            raise self._error

    def _hand_on(self, *, full_chunks_only: bool) -> None:
        try:
            while self._rows and (len(self._rows) >= self._chunk_size or not full_chunks_only):
                chunk, self._rows = self._rows[:self._chunk_size], self._rows[self._chunk_size:]
                self._on_chunk(chunk)
        except BaseException as error:  # noqa: BLE001 (raised again by finish, once COPY has ended)
            self._error = error
            self._rows = []


def _parsed(line: str) -> tuple[str | None, ...]:
    if "\\" not in line:  # no NULL and nothing escaped, as most rows are: the fields as they stand
        return tuple(line.split("\t"))
    return tuple(None if field == r"\N" else _ESCAPED.sub(_unescape, field) for field in line.split("\t"))


def _unescape(match: re.Match[str]) -> str:
    return _UNESCAPED.get(match.group(1), match.group(1))

