"""core.stream.copy_rows: a query's rows through COPY, in chunks, exactly as the server holds them."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from sqlalchemy import text

from core.stream import copy_rows


def _copied(engine, query: str, chunk_size: int, **params: Any) -> list[list[tuple[str | None, ...]]]:
    chunks: list[list[tuple[str | None, ...]]] = []
    with engine.connect() as conn:
        copy_rows(conn, text(query), params, chunks.append, chunk_size)
    return chunks


def test_text_with_tabs_newlines_backslashes_and_nulls_comes_back_exact(engine):
    odd = "tab\there\nnew line\\back slash\r\u00e9\u20ac \\N it's"
    query = "SELECT * FROM (VALUES (1, CAST(:odd AS text), NULL), (2, '', 'x')) AS v(n, a, b) ORDER BY n;"

    assert _copied(engine, query, chunk_size=10, odd=odd) == [[("1", odd, None), ("2", "", "x")]]


def test_values_are_bound_never_spliced_as_sql(engine):
    sneaky = "x'); DROP TABLE public.job_runs; --"
    query = ("SELECT CAST(:text AS text), CAST(:when AS timestamptz) = '2026-06-01 00:15+00', 100 % 7,"
             " array_length(CAST(:ids AS uuid[]), 1)")
    ids = [str(uuid.uuid4()) for _ in range(3)]

    assert _copied(engine, query, 5, text=sneaky, when=datetime(2026, 6, 1, 0, 15, tzinfo=timezone.utc),
                   ids=ids) == [[(sneaky, "t", "2", "3")]]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('public.job_runs') IS NOT NULL")).scalar_one()


@pytest.mark.parametrize(("rows", "chunk_size", "sizes"), [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (0, 3, []),
                                                           (2, 5, [2])])
def test_rows_are_handed_on_in_chunks_of_the_size_asked(engine, rows, chunk_size, sizes):
    chunks = _copied(engine, f"SELECT n FROM generate_series(1, {rows}) AS n ORDER BY n", chunk_size)

    assert [len(chunk) for chunk in chunks] == sizes
    assert [row for chunk in chunks for row in chunk] == [(str(n),) for n in range(1, rows + 1)]


def test_an_error_of_the_consumer_is_raised_once_copy_ends_and_the_transaction_goes_on(engine):
    seen: list[int] = []

    def stop_at_the_second_chunk(chunk: list[tuple[str | None, ...]]) -> None:
        seen.append(len(chunk))
        if len(seen) == 2:
            raise KeyboardInterrupt("stop asked")

    with engine.connect() as conn:
        with pytest.raises(KeyboardInterrupt, match="stop asked"):
            copy_rows(conn, text("SELECT n FROM generate_series(1, 10000) AS n"), {}, stop_at_the_second_chunk,
                      100)
        assert conn.execute(text("SELECT 41 + 1")).scalar_one() == 42

    assert seen == [100, 100]
