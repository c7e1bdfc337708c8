"""Console and number formats of the CLI: readable in a terminal and whole in a log.

Rich sizes a console to the terminal, and to 80 columns when stdout is a pipe or a file (Ray
job logs, CI, `| tee`): its tables then cut every cell to `1.44e+…`. Off a terminal the
console here is as wide as its content instead, so a piped table keeps every digit and its
lines stay aligned, and text lines are never re-wrapped.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from rich.console import Console

# Wide enough for any table the CLI prints; a table is only as wide as its content
# (Table.expand is False), so nothing is padded to this width.
PIPE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console for the current stdout (stderr): the terminal's width, or never-cut off a terminal.

    >>> import io, sys
    >>> make_console().width >= 80
    True
    """
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


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
