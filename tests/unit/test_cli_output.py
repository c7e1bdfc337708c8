"""The CLI's console off a terminal (orchestrator/cli/output.py) and the line-based progress."""
from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from orchestrator.cli.output import PIPE_WIDTH, make_console
from orchestrator.progress import SweepProgress


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
