"""Where the search of a newly opened cell starts (docs/search.md).

Without an lr law yet: a coarse lr scan. Otherwise at the (lr, batch) the laws predict, with its lattice
neighbours (the local-minimum certificate); a law check's cell on its lattice re-centred on the law's
point (`checks.check_lattice`); with `transfer`, a later cell's one run at the learned point
(`transfer.law_point`), under WSD branching a branch of a finished trunk of its size where the bowl allows.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..design import Design
from . import checks as law_checks
from .book import CellBook
from .branches import Branches
from .config import SearchConfig
from .lattice import LAW_POINT, SearchCell
from .law_state import SearchLaws
from .transfer import law_point


class CellStart:
    """Lays out the first points of an opened cell from what the search has learned."""

    def __init__(self, design: Design, config: SearchConfig, book: CellBook, learned: SearchLaws,
                 branches: Optional[Branches], init_keys: Sequence[tuple]):
        self.design, self.config, self.book, self.learned, self.branches = design, config, book, learned, branches
        self.init_keys = init_keys

    def begin(self, cell: SearchCell, info: dict[str, Any]) -> None:
        """Queue `cell`'s first points: a coarse lr scan without a law, else the law's point and its
        neighbours (a law check's lattice, transfer's single run); abandoned when the lattice has no point."""
        learned = self.learned
        if learned.hparams.lr_law is None:
            cell.scan(self.config.scan_points)
            return
        lr, batch = learned.predict(cell.N, cell.D)
        start = cell.nearest(lr, batch)
        if start is None:
            cell.state = "abandoned"
            return
        cell.start, cell.start_from = start, learned.hparams.source()
        if info.get("check") and self._check_lattice(cell, info["law_lr"], info["law_batch"]):
            return
        if self.config.transfer and cell.key not in self.init_keys and self._law_point(cell, lr, batch):
            return
        square = self.config.neighbourhood == "square"
        cell.queue = [start] + cell.neighbours(start, square)
        cell.why[start] = f"law's point: lr*={lr:.3g}, batch*={batch:.0f} ({cell.start_from})"
        for q in cell.queue[1:]:
            cell.why[q] = "neighbour of the law's point (local-minimum certificate)"

    def _law_point(self, cell: SearchCell, lr: float, batch: float) -> bool:
        """Transfer: the cell's one run at the learned point (`transfer.law_point`), with WSD branching a
        branch of a finished trunk of its size where the bowl allows, else a trunk; False: search the lattice."""
        if self.branches is not None:
            offer = self.branches.offer(cell, self.learned.predict, self.learned.hparams.surface_)
            if offer is not None:
                self.book.adopt(cell, LAW_POINT, self.branches.adopt(cell, offer, lr, batch))
                return True
        t = law_point(self.design, cell, lr, batch, self.learned.hparams.source())
        if t is not None:
            if self.branches is not None:
                t = self.branches.first(t)
            self.book.adopt(cell, LAW_POINT, t)
        return t is not None

    def _check_lattice(self, cell: SearchCell, lr: float, batch: float) -> bool:
        """A law check's cell: its lattice re-centred on the law's point (`checks.check_lattice`)."""
        trials = law_checks.check_lattice(self.design, cell, lr, batch, self.config, law_checks.lr_step(self.design))
        if trials is None:
            return False
        src = self.learned.hparams.source()
        for p, t in trials.items():
            self.book.adopt(cell, p, t)
        cell.start_from = "law check (" + src + ")"
        cell.why[cell.start] += f" ({src})"
        return True
