"""Which cell the law-guided search opens next, or why it waits (docs/search.md).

In order: the initial design (the smallest sizes, cheapest first; a blind scan waits for the first
optimum once `init_scans` are running); with `transfer`, the whole initial design before any law is
used, then the law checks near the target (`checks`); the cheapest cell while L(N, D) is not fitted;
then the acquisition rule (`acquisition`). Under WSD branching a chosen cell that a running trial of
its size will let start later in its schedule waits for that trial.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from ..design import Design
from ..protocol import Wait
from . import acquisition, checks as law_checks
from .book import CellBook
from .branches import Branches
from .config import SearchConfig
from .lattice import SearchCell
from .law_state import SearchLaws

Choice = Union[tuple[SearchCell, dict[str, Any]], Wait, None]  # a cell and why, a reason to wait, or nothing left


class CellChoice:
    """Picks the next closed cell to open from the search's book and what it has learned."""

    def __init__(self, design: Design, config: SearchConfig, book: CellBook, learned: SearchLaws,
                 branches: Optional[Branches], init_keys: Sequence[tuple]):
        self.design, self.config, self.book, self.learned, self.branches = design, config, book, learned, branches
        self.init_keys = init_keys

    def next(self) -> Choice:
        """The next cell to open with why, Wait with a reason, or None when no affordable cell is left."""
        cells, learned = self.book.cells, self.learned
        closed = [c for c in cells if c.state == "closed" and self.book.affords(c.flops)]
        if not closed:
            return None
        resolved = [c for c in cells if c.state == "resolved"]
        init_left = [c for c in closed if c.key in self.init_keys]
        if init_left:
            scanning = sum(1 for c in cells if c.start_from == "coarse scan" and c.state == "open")
            if not resolved and scanning >= self.config.init_scans:
                return Wait("another blind scan would waste runs: wait for the first optimum")
            return init_left[0], {"why": "initial design (smallest sizes, cheapest first)",
                                  "alternatives": len(init_left)}
        if self.config.transfer and any(c.state == "open" and c.key in self.init_keys for c in cells):
            return Wait("transfer: the laws come from the whole initial design")
        if self.config.transfer and learned.fit is not None:
            check = law_checks.next_check(cells, closed, learned.fit, learned.hparams, learned.checks, self.config,
                                          self.book.grid_flops, law_checks.lr_step(self.design))
            if check is not None:
                return check
        if learned.fit is None:
            if self.book.open_cells():
                return Wait("the L(N, D) fit needs these cells' results")
            return closed[0], {"why": "L(N, D) not fitted yet" + (f" ({learned.fit_error})" if learned.fit_error else "")
                               + ": cheapest remaining cell", "alternatives": len(closed)}
        cost = None
        if self.branches is not None:  # a cell another run of its size offers a checkpoint costs the rest
            branches, predict, surface = self.branches, learned.predict, learned.hparams.surface_
            cost = lambda c: branches.cost(c, predict, surface)  # noqa: E731
        choice = acquisition.acquire(closed, self.book.open_cells(), learned.fit, learned.targets, self.config,
                                     identified=learned.identified(cells), noise=learned.noise(self.book.fit_points()),
                                     runs=acquisition.expected_runs(cells, self.config), streak=learned.streak,
                                     cost=cost)
        return self._wait_for_checkpoint(choice)

    def _wait_for_checkpoint(self, choice: Choice) -> Choice:
        """WSD branching: a chosen cell that a run of its size still going would let start later in its
        schedule waits for that run (it was scored at that cost) instead of training from scratch."""
        if self.branches is None or not isinstance(choice, tuple):
            return choice
        cell = choice[0]
        now = self.branches.offer(cell, self.learned.predict, self.learned.hparams.surface_)
        later = self.branches.offer(cell, self.learned.predict, self.learned.hparams.surface_, pending=True)
        if later is not None and later["state"] == "running" and (now is None or later["share"] > now["share"]):
            return Wait(f"cell N={cell.N:.3g}, D={cell.D:.3g} waits for {later['source']} of its size: it will "
                        f"start from its checkpoint at step {later['step']} ({later['share']:.0%} of its steps)")
        return choice
