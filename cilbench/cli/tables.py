"""Tables that never split a value: whole cells at any width, or one `key: value` line each.

Rich wraps a cell that does not fit its column, which splits values and paths apart
(`milestones=4` / `0`, `.../resul` / `t.json`). Here a table is drawn only when every cell fits
whole on the console; otherwise each row is printed as a block of `column: value` lines, which a
pipe or a narrow terminal shows without cutting anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table

BORDER_AND_PADDING = 3
"""Characters a column adds around its widest line: a border and one space of padding each side."""


def show_table(
    console: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    right_aligned: Sequence[str] = (),
) -> None:
    """Print `rows` (plain text, lines separated by newlines) under `columns` on `console`."""
    if _natural_width(columns, rows) <= console.width:
        console.print(_table(title, columns, rows, right_aligned))
        return
    console.print(escape(title), style="bold", soft_wrap=True)
    for row in rows:
        console.print()
        for column, cell in zip(columns, row):
            lines = cell.splitlines() or [""]
            console.print(f"  {escape(column)}: {escape(lines[0])}", soft_wrap=True)
            for line in lines[1:]:
                console.print(f"    {escape(line)}", soft_wrap=True)


def _natural_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The width of the table with no cell wrapped."""
    widths = [cell_len(column) for column in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max([widths[i], *(cell_len(line) for line in cell.splitlines())])
    return sum(widths) + BORDER_AND_PADDING * len(columns) + 1


def _table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str]
) -> Table:
    multiline = any("\n" in cell for row in rows for cell in row)
    table = Table(title=escape(title), show_lines=multiline)
    for column in columns:
        justify: JustifyMethod = "right" if column in right else "left"
        table.add_column(escape(column), justify=justify, no_wrap=True)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table
