"""The search's cells: one (N, D) with its lattice of (lr, batch) points, and what is known at each point.

A cell's search walks its lattice from a start point to the best point's untried neighbours until
the best point is a local minimum (the certificate; the loss in (log lr, log batch) is a bowl).
Diverged runs are censored: that lr and every larger one at that batch or a smaller one count as
diverged without running. Pure Python (the planned trials come from `core.planning.design`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ...cells import in_cell
from ...outcome import Outcome, outcome_and_loss
from ..design import Design, trial_resources
from ..trial import PlannedTrial
from ...resources import AUTO, ResourceError

Point = tuple[int, int]  # (lr index, batch index) in a cell's lattice
UNKNOWN = ("failed", "budget")  # outcomes that say nothing about the loss at a point
LAW_POINT: Point = (-1, -1)  # transfer: a cell's single run at the learned (lr*, batch*), off its lattice


@dataclass
class SearchCell:
    """One (N, D) with its (lr, batch) lattice and the search state there."""

    key: tuple[int, int]
    N: float
    D: float
    flops: float  # FLOPs of one run (the lattice's largest, so budget checks are safe)
    lrs: list[float]
    batches: list[int]
    trials: dict[Point, PlannedTrial]
    state: str = "closed"  # closed | open | resolved | abandoned
    order: int = -1  # when it was opened
    start: Optional[Point] = None
    start_from: str = ""
    queue: list[Point] = field(default_factory=list)  # initial batch; searched only once all returned
    loss: dict[Point, float] = field(default_factory=dict)
    bad: dict[Point, str] = field(default_factory=dict)
    running: set = field(default_factory=set)
    why: dict[Point, str] = field(default_factory=dict)
    open_info: dict[str, Any] = field(default_factory=dict)
    runs: int = 0

    @property
    def C(self) -> float:
        """6·N·D."""
        return 6.0 * self.N * self.D

    def available(self, p: Point) -> bool:
        """A lattice point that exists and whose outcome is not unknowable."""
        return p in self.trials and self.bad.get(p) not in UNKNOWN

    def tried(self, p: Point) -> bool:
        """Run, running, or known without running."""
        return p in self.loss or p in self.bad or p in self.running

    def best(self) -> Optional[Point]:
        """The point with the lowest finite loss (ties: lower lr, then batch)."""
        if not self.loss:
            return None
        return min(self.loss, key=lambda p: (self.loss[p], p))

    def step(self, p: Point, di: int, dj: int) -> Optional[Point]:
        """The nearest available point from p in direction (di, dj) (skips holes in the lattice)."""
        i, j = p[0] + di, p[1] + dj
        while 0 <= i < len(self.lrs) and 0 <= j < len(self.batches):
            if self.available((i, j)):
                return (i, j)
            i, j = i + di, j + dj
        return None

    def neighbours(self, p: Point, square: bool) -> list[Point]:
        """Lattice neighbours of p (cross, or cross + diagonals)."""
        dirs = [(-1, 0), (1, 0), (0, -1), (0, 1)]
        if square:
            dirs += [(-1, -1), (1, 1), (-1, 1), (1, -1)]
        out = []
        for di, dj in dirs:
            q = self.step(p, di, dj)
            if q is not None and q not in out:
                out.append(q)
        return out

    def censor(self, p: Point) -> None:
        """p diverged: every larger lr at p's batch or a smaller one would too (docs/hparams.md)."""
        lr, batch = self.trials[p].lr, self.trials[p].batch
        for q, t in self.trials.items():
            if t.lr >= lr and t.batch <= batch and not self.tried(q):
                self.bad[q] = "censored"

    def ready(self, scan_points: int, square: bool) -> list[Point]:
        """Points that may start now (no side effects): the queue, else the best point's untried
        neighbours; with no finite loss yet, the untried point nearest the start (lower lr first)."""
        if self.queue:
            return [p for p in self.queue if self.available(p) and not self.tried(p)]
        best = self.best()
        if best is None:
            if self.running:
                return []
            misses = sum(1 for r in self.bad.values() if r in ("diverged", "stopped", "failed"))
            if misses >= scan_points:
                return []
            # The usual reason for no finite loss is divergence, and censoring already removed the larger lrs.
            left = [p for p in self.trials if self.available(p) and not self.tried(p)]
            s = self.start or (0, 0)
            left.sort(key=lambda p: (abs(p[0] - s[0]) + abs(p[1] - s[1]), p[0], p[1]))
            return left[:1]
        return [q for q in self.neighbours(best, square) if not self.tried(q)]

    def scan(self, scan_points: int) -> None:
        """Queue a coarse lr scan (no law yet): `scan_points` lrs spread over the lattice at the middle batch."""
        jm = len(self.batches) // 2
        avail = [i for i in range(len(self.lrs)) if self.available((i, jm))]
        if not avail:
            avail = sorted({p[0] for p in self.trials})
            jm = min((p[1] for p in self.trials if p[0] in avail), key=lambda j: abs(j - jm))
        k = min(scan_points, len(avail))
        picks = [avail[int(round(x))] for x in np.linspace(0, len(avail) - 1, k)] if k > 1 else [avail[len(avail) // 2]]
        self.queue = [p for p in dict.fromkeys((i, jm) for i in picks) if self.available(p)]
        self.start, self.start_from = (picks[len(picks) // 2], jm), "coarse scan"
        for p in self.queue:
            self.why[p] = f"initial design: coarse lr scan ({len(self.queue)} lrs, batch {self.batches[jm]})"

    def nearest(self, lr: float, batch: float) -> Optional[Point]:
        """The available point nearest (lr, batch): the batch nearest first, then the lr (None: none left)."""
        j = min(range(len(self.batches)), key=lambda j: (abs(math.log(self.batches[j] / batch)), j))
        pts = [p for p in self.trials if self.available(p)]
        if not pts:
            return None
        return min(pts, key=lambda p: (abs(p[1] - j), abs(math.log(self.lrs[p[0]] / lr)), p))

    def public(self) -> dict[str, Any]:
        """JSON-clean summary of the cell."""
        b = self.best()
        return {"N": self.N, "D": self.D, "C": self.C, "state": self.state, "runs": self.runs,
                "best_lr": self.trials[b].lr if b else None, "best_batch": self.trials[b].batch if b else None,
                "best_loss": self.loss[b] if b else None, "start_from": self.start_from}


def cells_of(trials: Sequence[PlannedTrial], design: Design) -> list[SearchCell]:
    """Group the grid's trials into (N, D) cells (one seed: the first of the design's).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> [(c.key, len(c.lrs), len(c.batches)) for c in cells_of(plan_grid(d), d)]
    [((20000, 640000.0), 3, 2), ((20000, 1280000.0), 3, 2), ((80000, 1280000.0), 3, 2)]
    """
    seed = design.seeds[0]
    groups: dict[tuple[int, int], list[PlannedTrial]] = {}
    for t in trials:
        # A batch too large for the cell's tokens is not a point of the cell: left out of its lattice.
        if t.seed != seed or not in_cell(t.D, t.cell):
            continue
        groups.setdefault((t.n_target, t.cell.D), []).append(t)
    cells = []
    for key, ts in groups.items():
        lrs = sorted({t.lr for t in ts})
        batches = sorted({t.batch for t in ts})
        lattice = {(lrs.index(t.lr), batches.index(t.batch)): t for t in ts}
        N = float(np.exp(np.mean([math.log(t.N) for t in ts])))
        D = float(np.exp(np.mean([math.log(t.D) for t in ts])))
        cells.append(SearchCell(key=key, N=N, D=D, flops=max(t.flops for t in ts), lrs=lrs, batches=batches,
                                trials=lattice))
    cells.sort(key=lambda c: (c.flops, c.N, c.D))
    return cells


def cell_optimum(cell: SearchCell) -> tuple[float, float, bool, bool]:
    """(log lr*, log batch*) of a resolved cell and whether each lies inside the lattice (not on its edge).

    The best point, refined by a parabola through it and its neighbours along each axis.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> c = cells_of(plan_grid(d), d)[0]
    >>> c.loss.update({(0, 0): 3.2, (1, 0): 3.0, (2, 0): 3.1})
    >>> x, y, lr_inside, batch_inside = cell_optimum(c)
    >>> 1e-3 < math.exp(x) < 9e-3, lr_inside, batch_inside
    (True, True, False)
    """
    b = cell.best()
    x, x_in = _refine(cell, b, 0, [math.log(v) for v in cell.lrs])
    y, y_in = _refine(cell, b, 1, [math.log(v) for v in cell.batches])
    return x, y, x_in, y_in


def _refine(cell: SearchCell, b: Point, axis: int, grid: list[float]) -> tuple[float, bool]:
    """Vertex of the parabola through the best point and its finite neighbours along one axis; interior?"""
    d = (1, 0) if axis == 0 else (0, 1)
    lo, hi = cell.step(b, -d[0], -d[1]), cell.step(b, d[0], d[1])
    x0 = grid[b[axis]]
    interior = lo is not None and hi is not None
    if len(grid) == 1:
        return x0, True  # a single value: nothing to locate, nothing censored
    if not interior or lo not in cell.loss or hi not in cell.loss:
        return x0, interior
    xs = np.array([grid[lo[axis]], x0, grid[hi[axis]]])
    ys = np.log([cell.loss[lo], cell.loss[b], cell.loss[hi]])
    A = np.stack([xs ** 2, xs, np.ones(3)], axis=1)
    try:
        qa, qb, _ = np.linalg.solve(A, ys)
    except np.linalg.LinAlgError:
        return x0, True
    if qa <= 0:
        return x0, True
    return float(np.clip(-qb / (2 * qa), xs[0], xs[2])), True


# ------------------------------------------------------------------------------------ result parsing


def outcome(result: Optional[Mapping[str, Any]], planned_D: Optional[float] = None) -> tuple[str, float]:
    """(status, loss) of a trial's last report: ok | diverged | stopped | failed (`core.outcome` decides).

    >>> outcome({"train_loss": 3.0, "eval_loss": 3.1, "done": 1.0, "tokens": 100}, planned_D=100)
    ('ok', 3.1)
    >>> outcome(None)[0]
    'failed'
    """
    o, loss = outcome_and_loss(result, planned_D)
    return ("ok" if o is Outcome.FINISHED else o.value), loss


# ------------------------------------------------------------------------------------ batch lattice


def min_batch(design: Design) -> int:
    """The smallest batch (tokens) a trial of this design can run: a sequence per worker.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> min_batch(d)  # one sequence per worker
    64
    """
    seq = design.seq_len
    workers = max((w for w in (design.resources.size(n).workers for n in design.sizes) if w is not AUTO), default=1)
    return seq * workers


def fits_resources(design: Design, sizes: Iterable[int], batch: int) -> bool:
    """Whether trials of these sizes at `batch` pass the resource check (`design.trial_resources`).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> fits_resources(d, d.sizes, 1024)  # nothing to check against: fits
    True
    """
    try:
        for n in sizes:
            trial_resources(design, n, batch)
    except ResourceError:
        return False
    return True


def batch_ladder(design: Design, factor: float) -> list[int]:
    """The design's batches extended below the smallest (down to one sequence per worker) and one
    step above the largest, by `factor`, in whole sequences: the transfer design's batch lattice.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> batch_ladder(d, 2.0)
    [64, 128, 256, 512, 1024, 2048, 4096]
    """
    seq, lo = design.seq_len, min_batch(design)
    out = set(design.batches)
    b = min(out) / factor
    while b >= lo:
        out.add(int(round(b / seq)) * seq)
        b /= factor
    out.add(int(round(max(out) * factor / seq)) * seq)
    return sorted(x for x in out if x >= lo)
