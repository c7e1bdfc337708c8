"""The live progress display of a running sweep (rich); line-based when stderr is not a terminal."""
from __future__ import annotations

import math
import time
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


class SweepProgress:
    """Trials running/done, compute spent of the budget and the best loss per N, live."""

    def __init__(self, name: str, n_trials: int, planned_flops: float, budget: Optional[float],
                 console: Optional[Console] = None, enabled: bool = True):
        self.name = name
        self.n_trials = n_trials
        self.planned_flops = planned_flops
        self.budget = budget
        if console is None:
            from .cli.output import make_console

            console = make_console(stderr=True)
        self.console = console
        # Off a terminal (a log file, a Ray job's log) a live display cannot redraw: one line per
        # change of the counts instead, at most every LOG_EVERY_S seconds, and the table at the end.
        self.live = console.is_terminal
        self._last_line = 0.0
        self._last_counts: Optional[tuple] = None
        self.enabled = enabled
        self.state: dict[str, str] = {}
        self.flops: dict[str, float] = {}
        self.best: dict[int, float] = {}
        self.start = time.monotonic()
        self._live: Optional[Live] = None

    def __enter__(self) -> "SweepProgress":
        if self.enabled and self.live:
            # Rendered by Live's own refresh (2/s), not on every report: a render walks every
            # trial, which would cost O(trials) per report in a sweep of thousands.
            self._live = Live(console=self.console, refresh_per_second=2, transient=False, get_renderable=self.render)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled and not self.live:
            self.console.print(self.render())
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None

    def trial_state(self, trial_id: str, state: str) -> None:
        """Record a trial's new state (running, finished, diverged, failed, stopped)."""
        self.state[trial_id] = state
        self._refresh()
        if self.enabled and not self.live:
            self._log_line()

    def report(self, trial_id: str, n_params: int, flops: float, eval_loss: float) -> None:
        """Record one report of a trial."""
        self.flops[trial_id] = flops
        if eval_loss == eval_loss and math.isfinite(eval_loss):
            self.best[n_params] = min(self.best.get(n_params, math.inf), eval_loss)
        self._refresh()

    def _refresh(self) -> None:
        pass  # Live re-renders by itself (get_renderable), at most twice a second

    LOG_EVERY_S = 10.0

    def _log_line(self) -> None:
        counts = tuple(sorted((s, sum(1 for v in self.state.values() if v == s)) for s in set(self.state.values())))
        now = time.monotonic()
        if counts == self._last_counts or now - self._last_line < self.LOG_EVERY_S:
            return
        self._last_counts, self._last_line = counts, now
        self.console.print(self.head(), soft_wrap=True)

    def head(self) -> Text:
        """One line: trials by state, compute spent of the budget, elapsed time."""
        counts = {s: sum(1 for v in self.state.values() if v == s) for s in ("running", "finished", "diverged", "failed", "stopped", "stopped-by-user")}
        spent = sum(self.flops.values())
        cap = self.budget or self.planned_flops
        elapsed = time.monotonic() - self.start
        extra = "".join(f", {counts[s]} {s}" for s in ("diverged", "failed", "stopped", "stopped-by-user") if counts[s])
        pct = f" ({100 * spent / cap:.0f}%)" if cap else ""
        return Text.assemble(
            (f"sweep {self.name}  ", "bold"),
            f"trials {counts['finished']}/{self.n_trials} done, {counts['running']} running{extra}",
            f"  |  compute {spent:.3g} / {cap:.3g} FLOPs{pct}  |  {elapsed:.0f}s",
        )

    def render(self) -> Group:
        """The current display."""
        head = self.head()
        table = Table(title=None, show_edge=False, pad_edge=False)
        table.add_column("N (non-emb.)", justify="right")
        table.add_column("best eval loss (nats/token)", justify="right")
        for n in sorted(self.best):
            table.add_row(f"{n:,}", f"{self.best[n]:.4f}")
        return Group(head, table)
