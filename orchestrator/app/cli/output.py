"""Console and number formats of the CLI: readable in a terminal and whole in a log.

Rich sizes a console to the terminal, and to 80 columns when stdout is a pipe or a file (Ray
job logs, CI, `| tee`): its tables then cut every cell to `1.44e+…`. Off a terminal the
console here is as wide as its content instead, so a piped table keeps every digit and its
lines stay aligned, and text lines are never re-wrapped. In a terminal a table's cells wrap at
spaces and never end in `…`; a table that cannot fit with every word whole (`status`'s trial ids
in an 80-column terminal) is printed as one block of `header: value` lines per row instead.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from rich.console import Console, Group
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

# Wide enough for any table the CLI prints; a table is only as wide as its content
# (Table.expand is False), so nothing is padded to this width.
PIPE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console for the current stdout (stderr): the terminal's width, or never-cut off a terminal.

    >>> import io, sys
    >>> make_console().width >= 80
    True
    """
    console = WholeConsole(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


class WholeConsole(Console):
    """A terminal's console whose tables never cut a cell (`whole`)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(whole(o, self) if isinstance(o, Table) else o for o in objects), **kwargs)


def whole(table: Table, console: Console) -> Any:
    """`table` with cells that wrap at spaces instead of ending in `…`, or, when it cannot fit the console
    with every word whole, its rows as blocks of `header: value` lines (the first cell's unindented).

    >>> t = Table("trial", "D (tokens)")
    >>> t.add_row("N19800-D1605632-lr0.03-b8192-s0-e51237", "1,605,632")
    >>> Console(width=50).print(whole(t, Console(width=50)))
    trial: N19800-D1605632-lr0.03-b8192-s0-e51237
      D (tokens): 1,605,632
    """
    for col in table.columns:
        col.overflow = "fold"  # wraps at spaces; breaks a word only where the table is too narrow
    # measured unbounded: a measurement against the console is capped at its width
    if Measurement.get(console, console.options.update_width(PIPE_WIDTH), table).minimum <= console.width:
        return table
    heads = [" ".join(str(c.header).split()) for c in table.columns]
    cells = [list(c._cells) for c in table.columns]  # noqa: SLF001 -- rich keeps a column's cells here
    lines: list[Any] = [Text(str(table.title))] if table.title else []
    for r in range(table.row_count):
        row = [c[r] if r < len(c) else "" for c in cells]
        for i, (head, cell) in enumerate(zip(heads, row)):
            value = Text.from_markup(cell) if isinstance(cell, str) else cell
            label = ("  " if i else "") + (f"{head}: " if head else "")
            lines.append(Text.assemble(label, value) if isinstance(value, Text) else value)
    return Group(*lines)


class LazyConsole:
    """`make_console()` per call: a module-level console would keep the stdout (and width) it
    saw at import, not the one a command runs with (Typer's test runner swaps stdout)."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(make_console(self.stderr), name)


def integer(x: Optional[float]) -> str:
    """A count (parameters, tokens, batch) as a whole number with thousands separators.

    >>> integer(842753.75), integer(8192), integer(None)
    ('842,754', '8,192', '-')
    """
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{round(float(x)):,}"


def si(x: Optional[float]) -> str:
    """A count in 3 significant digits with k / M / B / T (interval ends, compact columns).

    >>> si(650312.2), si(1.0054e6), si(16576322.5), si(2.5e11), si(512), si(999950)
    ('650k', '1.01M', '16.6M', '250B', '512', '1M')
    """
    if x is None or not math.isfinite(float(x)):
        return "-"
    v = float(x)
    units = ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T"))
    i = max((j for j, (div, _) in enumerate(units) if abs(v) >= div), default=None)
    if i is None:
        return f"{v:.3g}"
    q = float(f"{v / units[i][0]:.3g}")
    if q >= 1000 and i + 1 < len(units):  # 999,950 is 1M, not "1e+03k"
        i += 1
        q = float(f"{v / units[i][0]:.3g}")
    return f"{q:g}{units[i][1]}"


def flops(x: Optional[float]) -> str:
    """A FLOP count, 3 significant digits in scientific notation.

    >>> flops(1e14), flops(1.0121e13), flops(None)
    ('1e+14', '1.01e+13', '-')
    """
    if x is None or not math.isfinite(float(x)):
        return "-"
    return f"{float(x):.3g}"


def interval(iv: Optional[dict], fmt=si) -> str:
    """`[low, high]` of an interval dict, or "" where there is none (no made-up bands).

    >>> interval({"low": 650312.2, "high": 1005450.1}), interval({}), interval(None)
    ('[650k, 1.01M]', '', '')
    """
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return ""
    return f"[{fmt(iv['low'])}, {fmt(iv['high'])}]"
