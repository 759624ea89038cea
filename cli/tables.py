"""The one table formatter of the command line.

A table fits the console's width, and never cuts an id, a key or a status to do so. Columns keep
their natural width while they fit; past that the free-text column (`flex`) is cut first (with an
ellipsis, or wrapped when it asks to), then the free-text columns marked `shrink`; then optional
columns (`drop` > 0, highest first) are left out whole. Every other column holds something a person
copies or compares (an id, a key, a status, an instant) and is shown whole: only when the table
still does not fit is the widest of them folded onto more lines, never cut. Whole numbers get
thousands separators and align right.

`aligned_lines` is the same table as plain text for a document that is kept or embedded whole (the
reconciliation report, also in the demo's output): no width to fit, nothing cut, no styling.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Sequence

from rich import box
from rich.table import Table

from cli.terminal import stdout_console

GAP = 2  # spaces between columns (rich's padding (0, 1) on each side)
FLEX_MIN = 16
SHRINK_MIN = 10
FOLD_MIN = 8  # a whole column is folded down to this width at the very last


@dataclass(frozen=True)
class Column:
    header: str
    wrap: bool = False  # a flex column: wrap long cells onto more lines instead of cutting them
    flex: bool = False  # the free-text column: gets what is left, cut first
    shrink: bool = False  # free text that may be cut (with …) down to SHRINK_MIN once flex columns are at theirs
    drop: int = 0  # > 0: left out when the table does not fit otherwise (highest first)
    right: bool = False  # align right although the cells are text (signed numbers, money)

    @property
    def cuttable(self) -> bool:
        return self.flex or self.shrink


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, Decimal) and value == value.to_integral_value()):
        return f"{int(value):,}"
    return str(value)


def _numeric(values: Sequence[Any]) -> bool:
    present = [value for value in values if value is not None]
    return bool(present) and all(isinstance(value, (int, Decimal)) and not isinstance(value, bool)
                                 for value in present)


def _natural(column: Column, cells: Sequence[str]) -> int:
    return max([len(column.header), *(max((len(line) for line in text.splitlines()), default=0) for text in cells)])


def fit_widths(columns: Sequence[Column], cells: Sequence[Sequence[str]], available: int) -> list[int | None]:
    """Each column's width (None: left out) so that the table is at most `available` wide."""
    natural = [_natural(column, [row[i] for row in cells]) for i, column in enumerate(columns)]
    widths: list[int | None] = list(natural)

    def excess() -> int:
        shown = [width for width in widths if width is not None]
        return sum(shown) + GAP * (len(shown) - 1) - available

    def narrow(index: int, minimum: int) -> None:
        width = widths[index]
        if width is not None and excess() > 0:
            widths[index] = max(min(width, minimum), width - excess())

    for minimum, cuttable in ((FLEX_MIN, lambda c: c.flex), (SHRINK_MIN, lambda c: c.shrink)):
        for i, column in enumerate(columns):
            if cuttable(column):
                narrow(i, minimum)
    for level in sorted({column.drop for column in columns if column.drop}, reverse=True):
        if excess() <= 0:
            break
        widths = [None if column.drop == level else width for column, width in zip(columns, widths)]
        for i in sorted(range(len(columns)), key=lambda i: not columns[i].flex):  # room back, flex first
            width = widths[i]
            if columns[i].cuttable and width is not None and excess() < 0:
                widths[i] = min(natural[i], width - excess())
    _fold_widest(widths, excess)
    return widths


def _fold_widest(widths: list[int | None], excess: Any) -> None:
    """The last resort when even the whole columns do not fit: fold the widest onto more lines."""
    while excess() > 0:
        widest = max((i for i, width in enumerate(widths) if width is not None), key=lambda i: widths[i] or 0)
        width = widths[widest] or 0
        if width <= FOLD_MIN:
            return
        widths[widest] = max(FOLD_MIN, width - excess())


def build_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, width: int,
                title: str | None = None, show_header: bool = True) -> Table:
    cells = [[cell(value) for value in row] for row in rows]
    widths = fit_widths(columns, cells, width)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left",
                  title_style="bold", header_style="bold", show_header=show_header, collapse_padding=True)
    shown = [i for i, w in enumerate(widths) if w is not None]
    for i in shown:
        column, fitted = columns[i], widths[i]
        cut = column.cuttable and not column.wrap
        folded = not cut and fitted is not None and fitted < _natural(column, [row[i] for row in cells])
        table.add_column(column.header, justify="right" if column.right or _numeric([row[i] for row in rows]) else "left",
                         no_wrap=not folded, overflow="ellipsis" if cut else "fold",
                         width=fitted, min_width=fitted, max_width=fitted)
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    return table


def print_table(columns: Sequence[Column], rows: Sequence[Sequence[Any]], *, title: str | None = None,
                show_header: bool = True) -> None:
    console = stdout_console()
    if title:
        console.print(title, style="bold", markup=False)
    with console.capture() as captured:  # rich pads every cell; lines end without trailing blanks
        console.print(build_table(columns, rows, width=console.width, show_header=show_header))
    lines = [line.rstrip() for line in captured.get().splitlines()]
    console.file.write("".join(line + "\n" for line in lines))
    console.file.flush()


def aligned_lines(header: Sequence[str] | None, rows: Sequence[Sequence[str]], *,
                  right: tuple[int, ...] = ()) -> list[str]:
    """A table as plain lines of text for a document (the reconciliation report): every column as
    wide as its widest cell, two spaces apart, a dashed rule under the header; never cut to a width."""
    everything = ([list(header)] if header else []) + [list(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(*everything)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(width) if index in right else cell.ljust(width)
                         for index, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * width for width in widths)] if header else []
    return out + [line(row) for row in rows]
