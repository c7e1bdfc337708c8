"""The CLI's console off a terminal (orchestrator/app/cli/output.py) and the line-based progress."""
from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from orchestrator.app.cli.output import PIPE_WIDTH, WholeConsole, make_console
from orchestrator.app.progress import SweepProgress


def test_piped_console_never_cuts_a_table(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    console = make_console()
    assert not console.is_terminal and console.width == PIPE_WIDTH
    table = Table(*[f"column with a long header {i}" for i in range(12)])
    table.add_row(*[f"{1.23456789e14 * i:,.0f}" for i in range(12)])
    console.print(table)
    out = console.file.getvalue()
    assert "…" not in out and "1,234,567,890,000,000" in out
    assert len({len(line) for line in out.splitlines()}) == 1  # aligned
    # the 80-column default a plain Console takes off a terminal cuts the same table
    narrow = Console(file=io.StringIO())
    narrow.print(table)
    assert "…" in narrow.file.getvalue()



def test_terminal_console_wraps_a_table_that_fits_and_blocks_one_that_cannot():
    """In a terminal of 80 columns: a table that fits with every word whole wraps its headers, never `…`; one
    that cannot (long trial ids beside 7 columns) prints each row as `header: value` lines, every value whole."""
    def show(table: Table) -> str:
        console = WholeConsole(file=io.StringIO(), force_terminal=True, width=80, color_system=None)
        console.print(table)
        return console.file.getvalue()

    fits = Table(*[f"a long header {i}" for i in range(6)])
    fits.add_row(*[f"{1.2345e6 * (i + 1):,.0f}" for i in range(6)])
    out = show(fits)
    assert "…" not in out and "┃" in out and all(f"{1.2345e6 * (i + 1):,.0f}" in out for i in range(6))
    ids = [f"N{n}-D1605632-lr0.03-b8192-s0-e5123{n}" for n in range(3)]
    wide = Table("trial", "status", "N (params)", "D (tokens)", "lr", "batch (tokens)", "FLOPs spent / planned")
    for tid in ids:
        wide.add_row(tid, "stopped-by-user", "121,500", "1,605,632", "0.03", "8,192", "1.16e+12 / 1.17e+12")
    out = show(wide)
    assert "…" not in out and all(len(line) <= 80 for line in out.splitlines()), out
    assert all(f"trial: {tid}" in out for tid in ids) and out.count("  D (tokens): 1,605,632") == 3
    assert "  FLOPs spent / planned: 1.16e+12 / 1.17e+12" in out


def test_output_doctests_hold():
    import doctest

    import orchestrator.app.cli.output as output

    result = doctest.testmod(output, report=False)
    assert result.attempted > 0 and result.failed == 0, result


def test_progress_off_a_terminal_prints_lines_and_the_final_table():
    buf = io.StringIO()
    console = Console(file=buf, width=PIPE_WIDTH)  # a file: not a terminal
    progress = SweepProgress("s", 2, 1e12, None, console=console)
    progress.LOG_EVERY_S = 0.0
    with progress:
        progress.trial_state("a", "running")
        progress.report("a", 19800, 5e11, 3.5)
        progress.trial_state("a", "finished")
    lines = buf.getvalue().splitlines()
    assert sum("sweep s" in line for line in lines) == 3  # two state changes, then the final display
    assert any("trials 1/2 done, 0 running" in line for line in lines)
    assert any("19,800" in line and "3.5000" in line for line in lines)
    assert "\x1b[" not in buf.getvalue()  # no cursor movement or colours in a log
