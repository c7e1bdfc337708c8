"""How a law-guided search is rebuilt from its store on resume (or replayed for a query): the trials an
earlier run ended are replayed, not run again; the lattice runs it started and did not end run again
first, as it planned them; WSD branches it handed out late join the cells they were planned for. A
mixin of `planner.LawGuidedPlanner` (its resume, apart from its planning), using the planner's
`book`, `cells`, `branches` and hand-out methods.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from .lattice import Point, SearchCell


class SearchResume:
    """The resume of a law-guided search (`Planner.resume`)."""

    def resume(self, results: Mapping[str, Optional[Mapping[str, Any]]],
               interrupted: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        """Replay finished trials of an earlier run of this sweep (their compute is committed). The lattice
        runs it started and did not end (`interrupted`: their recorded configs) are handed out again
        first, as that run planned them (a WSD run keeps its branch point: it continues from its own
        checkpoint); the search, replayed, might never choose them again (issue 13). Law points
        (transfer's) are re-planned when their cell opens, as before."""
        for tid, result in results.items():
            where = self.book.where.get(tid)
            if where is None:  # planned as the search went (a law point): taken when re-planned
                self._resumed[tid] = result
                continue
            cell, p = self._reopen(where)
            if p in cell.running or p in cell.loss or p in cell.bad:
                continue
            self._hand(cell, p)  # the law search's WSD runs: their checkpoints registered as they were handed
            self.observe(tid, result)
        for tid, config in (interrupted or {}).items():
            where = self.book.where.get(tid)
            if where is None or tid in results:
                continue
            cell, p = self._reopen(where)
            if p in cell.running or p in cell.loss or p in cell.bad:
                continue
            t = cell.trials[p] if self.branches is None else self.branches.as_recorded(cell.trials[p], config)
            cell.why[p] = "interrupted in an earlier run of this sweep: continued as it was planned then"
            self._hand(cell, p, t)
            self._log(cell, p, t)
            self._continued.append(t)

    def _reopen(self, where: tuple[SearchCell, Point]) -> tuple[SearchCell, Point]:
        """A resumed trial's cell, open again (it was open in the earlier run)."""
        cell, _ = where
        if cell.state == "closed":
            self._opened += 1
            cell.state, cell.order, cell.start_from = "open", self._opened, "resumed"
        return where

    def _take_resumed_branches(self) -> None:
        """A resumed (or replayed) search that stops with WSD branches of the earlier run still unplanned:
        the run handed them out while the trials that stopped it were running, and they ended. Each joins
        the cell it was planned for, as in the run, so that its loss is corrected by the same bowl penalty
        (`loss_as_fitted`); a sequential replay alone would never plan them, and `propose` would fit their
        raw losses while the run's fit.json corrected them."""
        if self.branches is None or not self.transfer:  # the law search's runs are all on its lattice
            return
        for _ in range(len(self.cells)):  # a branch taken can be the run another one started from
            taken = False
            for cell in self.cells:
                if not self._resumed or cell.state != "closed" or cell.key in self._init_keys:
                    continue
                offer = self.branches.offer(cell, self.predict_hparams, self.hparams.surface_)
                if offer is not None and offer["trial"].trial_id in self._resumed:
                    self._open(cell, {"why": "a WSD branch an earlier run of this sweep handed out before it stopped"})
                    self._from_cell(cell)  # hands and observes the ended trial
                    taken = True
            if not taken:
                return
