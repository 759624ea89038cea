"""The one table formatter of the command line.

A table fits the console's width: long text cells are cut with an ellipsis (or wrapped, for a
column that asks for it), never pushed onto a second, unaligned line. Whole numbers get thousands
separators and align right.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rich import box
from rich.table import Table

from cli.terminal import stdout_console


@dataclass(frozen=True)
class Column:
    header: str
    wrap: bool = False  # wrap long cells onto more lines instead of cutting them
    ratio: int | None = None  # a share of the width left over, for the long free-text column


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _numeric(rows: Sequence[Sequence[Any]], index: int) -> bool:
    values = [row[index] for row in rows if row[index] is not None]
    return bool(values) and all(isinstance(value, int) and not isinstance(value, bool) for value in values)


def build_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left",
                  header_style="bold", expand=any(column.ratio for column in columns))
    for index, column in enumerate(columns):
        table.add_column(column.header, justify="right" if _numeric(rows, index) else "left",
                         no_wrap=not column.wrap, overflow="fold" if column.wrap else "ellipsis",
                         ratio=column.ratio)
    for row in rows:
        table.add_row(*(cell(value) for value in row))
    return table


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> None:
    stdout_console().print(build_table(columns, rows, title=title))
