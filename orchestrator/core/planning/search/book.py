"""The search's book of cells: where every planned trial lives, what was handed out, the compute committed.

Compute is committed when a trial is handed out (its planned FLOPs), so concurrent trials never
overrun the budget. Trials planned as the search goes (a transfer law point, a law check's
lattice) are adopted into their cell here.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..design import Design
from ..trial import PlannedTrial
from .branches import corrected_loss
from .lattice import Point, SearchCell, cells_of


class CellBook:
    """The cells of the candidate trials and the hand-out state."""

    def __init__(self, trials: Sequence[PlannedTrial], design: Design, budget: Optional[float]):
        self.trials: list[PlannedTrial] = list(trials)
        self.budget = budget
        self.committed = 0.0
        self.handed: list[PlannedTrial] = []
        self.grid_flops = float(sum(t.flops for t in self.trials))  # what the full lattice would cost
        self.cells = cells_of(self.trials, design)
        if not self.cells:
            raise ValueError("no candidate trials")
        self.where: dict[str, tuple[SearchCell, Point]] = {
            t.trial_id: (c, p) for c in self.cells for p, t in c.trials.items()}

    def adopt(self, cell: SearchCell, p: Point, t: PlannedTrial) -> None:
        """A trial planned as the search goes (off the spec's grid) joins the cell's lattice."""
        cell.trials[p] = t
        self.where[t.trial_id] = (cell, p)
        self.trials.append(t)

    def replace(self, cell: SearchCell, p: Point, t: PlannedTrial) -> None:
        """Point p's trial re-planned before it is handed out (the same trial id: a WSD run's schedule,
        checkpoints or branch point)."""
        old = cell.trials[p]
        cell.trials[p] = t
        self.trials[self.trials.index(old)] = t

    def hand(self, cell: SearchCell, p: Point) -> PlannedTrial:
        """Commit the point's trial: running, counted, its compute committed."""
        t = cell.trials[p]
        cell.running.add(p)
        cell.runs += 1
        self.committed += t.flops
        self.handed.append(t)
        return t

    def affords(self, flops: float) -> bool:
        """Whether `flops` more fit the budget."""
        return self.budget is None or self.committed + flops <= self.budget * (1 + 1e-12)

    def open_cells(self) -> list[SearchCell]:
        """The cells being searched, in the order they were opened."""
        return sorted((c for c in self.cells if c.state == "open"), key=lambda c: c.order)

    def running(self) -> bool:
        """Whether any handed-out trial has not ended."""
        return any(c.running for c in self.cells)

    def fit_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, D, best loss) of the resolved cells: the points of the L(N, D) fit (a WSD branch's loss
        corrected to its own law point by the fitted bowl, `branches.corrected_loss`)."""
        cells = [c for c in self.cells if c.state == "resolved"]
        return (np.array([c.N for c in cells]), np.array([c.D for c in cells]),
                np.array([corrected_loss(c, c.loss[c.best()]) for c in cells]))


def run_decision(cell: SearchCell, p: Point, t: PlannedTrial, committed: float) -> dict[str, Any]:
    """The decision that hands out `t` (point p of `cell`): the trial, why, and why its cell was opened.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.lattice import cells_of
    >>> cells = cells_of(plan_grid(d), d)
    >>> c = cells[0]; p = next(iter(c.trials))
    >>> e = run_decision(c, p, c.trials[p], committed=0.0)
    >>> e["action"], e["trial_id"] == c.trials[p].trial_id
    ('run', True)
    """
    info = cell.open_info
    return {
        "action": "run", "trial_id": t.trial_id, "N": t.N, "D": t.D, "lr": t.lr, "batch": t.batch,
        "flops": t.flops, "committed_flops": committed, "why": cell.why.get(p, ""),
        "cell": {"N": cell.N, "D": cell.D, "C": cell.C, "opened_because": info.get("why"),
                 "start_from": cell.start_from},
        "expected_gain": info.get("expected_gain"), "score": info.get("score"),
        "alternatives": info.get("alternatives", 0), "pruned": info.get("pruned", 0),
        "pruned_cells": info.get("pruned_cells", []) if cell.runs == 1 else [],
        "p_near_frontier": info.get("p_near_frontier"),
    }
