"""Law-guided search: which trial to run next, chosen for what it teaches about the target-budget optimum.

Pure Python (no Ray), deterministic given the seed and the order of `observe` calls. Same
interface as `GridPlanner`: `next_trial()` returns a `PlannedTrial`, `WAIT` (nothing to start
until a running trial reports) or None (done); `observe(trial_id, result)` takes the trial's
last report (None when it failed). The candidates are the spec's grid; the search works on
*cells* (one (N, D) with its lattice of (lr, batch) points):

1. **Initial design.** The cells of the `init_sizes` smallest model sizes, cheapest first. The
   first `init_scans` cells get a coarse learning-rate scan (no law exists yet); the planner
   WAITs for the scan instead of opening more blind cells.
2. **Cell search.** A cell starts at the (lr, batch) predicted by the hyperparameter law learned
   so far (lr* = c·N^a·D^b, batch* = c'·D^d, a ridge regression over the resolved cells' optima)
   together with its lattice neighbours, then moves to the best point's untried neighbours until
   the best point is a local minimum of the lattice (a certificate; the loss landscape in
   (log lr, log batch) is a convex bowl). Diverged runs are censored: that lr and every larger lr
   at that batch or smaller ones count as diverged, without running them.
3. **Acquisition.** Once `min_fit_cells` cells are resolved, Chinchilla's L(N, D) is fitted to their
   best losses with bootstrap replicates. The next cell is the one with the largest expected
   reduction of the uncertainty of log N*(C) and log L*(C) at every target C, per FLOP it will
   cost (the ensemble-Kalman gain Cov(q, f)² / (Var f + σ²) computed from the replicates, f the
   candidate's predicted log loss; cells still being searched are conditioned on first).
   Cells whose probability of lying near the frontier is below `prune_below` are skipped.
4. **Stop** when, at every target, the `level` intervals of N*(C) and L*(C) are narrower (relative
   width) than `tolerance` and `loss_tolerance`, or when the budget, `max_trials` or the cells run out.

With `strategy: transfer` the initial design is the whole calibration: it covers every cell of
the `init_sizes` smallest sizes, on a batch lattice extended by `batch_ladder` (so each cell's
batch optimum is bracketed, not only its lr), and every cell opened after it runs **once**, at
the (lr*, batch*) the laws predict for it (off the spec's lattice: a learned point, not a
lattice neighbour). Small models are cheap, so learning the laws there and transferring them
up costs a fraction of searching every cell; the laws are fitted on the searched cells only, as
one bowl shared by every run (`laws.hparam_surface`), and the search stops on the regret risk of
its proposal (`regret_tolerance`). Because those laws are extrapolated decades and can have the
wrong form, transfer also checks them near the target (a bracket of runs around the law's point
at the largest affordable size, which then enters the laws), hedges the proposed lr towards the
flatter side of a measured asymmetric bowl by the law's uncertainty there, and backtests L(N, D)
by size (docs/search.md, "How the search notices and survives a wrong law").

Every hand-out and the stop are explained in `decisions` (docs/search.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .laws.chinchilla import ChinchillaFit, fit_chinchilla, frontier_samples
from .laws.hparam_surface import SurfaceFit, fit_surface
from .laws.hparams import BatchLaw, HparamError, LrLaw
from .core.cells import in_cell
from .planner import WAIT, PlannedTrial, plan_grid, plan_trial, trial_resources
from .spec import SearchSpec, SpecError, SweepSpec

Point = tuple[int, int]  # (lr index, batch index) in a cell's lattice
_UNKNOWN = ("failed", "budget")  # outcomes that say nothing about the loss at a point
_WORSE = ("diverged", "censored", "stopped")  # outcomes that say "not the best point"
LAW_POINT: Point = (-1, -1)  # transfer: a cell's single run at the learned (lr*, batch*), off its lattice


# The knobs are the spec's `search` section (typed, validated, documented in docs/spec.md).
SearchConfig = SearchSpec


# ------------------------------------------------------------------------------------ cells


@dataclass
class _Cell:
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
        return p in self.trials and self.bad.get(p) not in _UNKNOWN

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

    def public(self) -> dict[str, Any]:
        """JSON-clean summary of the cell."""
        b = self.best()
        return {"N": self.N, "D": self.D, "C": self.C, "state": self.state, "runs": self.runs,
                "best_lr": self.trials[b].lr if b else None, "best_batch": self.trials[b].batch if b else None,
                "best_loss": self.loss[b] if b else None, "start_from": self.start_from}


def _cells_of(trials: Sequence[PlannedTrial], spec: SweepSpec) -> list[_Cell]:
    """Group the grid's trials into (N, D) cells (one seed: the first of the spec's)."""
    seed = spec.seeds[0]
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
        cells.append(_Cell(key=key, N=N, D=D, flops=max(t.flops for t in ts), lrs=lrs, batches=batches,
                           trials=lattice))
    cells.sort(key=lambda c: (c.flops, c.N, c.D))
    return cells


# ------------------------------------------------------------------------------------ result parsing


def outcome(result: Optional[Mapping[str, Any]]) -> tuple[str, float]:
    """(status, loss) of a trial's last report: ok | diverged | stopped | failed."""
    if result is None:
        return "failed", math.nan
    loss = _num(result.get("loss", result.get("eval_loss")))
    train = _num(result.get("train_loss"))
    if math.isfinite(loss) and loss > 0:
        done = _num(result.get("done", 1.0))
        # A trial stopped early by a scheduler ends before its last step (done = 0): its loss is
        # not a final loss, only evidence that it was not the best point.
        return ("ok" if not (done < 1.0) else "stopped"), loss
    if not math.isfinite(train) or result.get("diverged"):
        return "diverged", math.nan
    return "failed", math.nan


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------------------ planner


class LawGuidedPlanner:
    """Chooses each next trial by what it teaches about the compute-optimal config at the target budgets."""

    def __init__(self, spec: SweepSpec, seed: int = 0, config: Optional[SearchConfig] = None,
                 candidates: Optional[Sequence[PlannedTrial]] = None):
        self.spec = spec
        self.seed = int(seed)
        self.config = config or SearchConfig()
        self.transfer = self.config.strategy == "transfer"
        sizes = sorted(spec.model.sizes())
        if candidates is not None:
            self.trials: list[PlannedTrial] = list(candidates)
        elif self.transfer:
            # The initial design's sizes search a lattice with the ladder's batches; the others keep
            # the spec's (their lattice is only a fallback: they run at the learned point).
            init = set(sizes[: self.config.init_sizes])
            ladder = [b for b in batch_ladder(spec, self.config.batch_ladder) if _fits(spec, init, b)]
            self.trials = [t for t in plan_grid(spec, ladder) if t.n_target in init] + \
                [t for t in plan_grid(spec) if t.n_target not in init]
        else:
            self.trials = plan_grid(spec)
        self.budget = spec.budget.total_flops
        self.committed = 0.0
        self.grid_flops = float(sum(t.flops for t in self.trials))  # what the full lattice would cost
        self.cells = _cells_of(self.trials, spec)
        if not self.cells:
            raise ValueError("no candidate trials")
        self._where: dict[str, tuple[_Cell, Point]] = {
            t.trial_id: (c, p) for c in self.cells for p, t in c.trials.items()}
        self.targets = list(spec.budget.targets) or [100.0 * max(c.C for c in self.cells)]
        sizes = sorted({c.key[0] for c in self.cells})
        self._init_keys = [c.key for c in self.cells if c.key[0] in sizes[: self.config.init_sizes]]
        self.decisions: list[dict[str, Any]] = []
        self.handed: list[PlannedTrial] = []
        self.fit: Optional[ChinchillaFit] = None
        self.lr_law: Optional[LrLaw] = None
        self.batch_law: Optional[BatchLaw] = None
        self.stopped: Optional[str] = None
        self._opened = 0
        self._fit_error: Optional[str] = None
        self._streak = 0
        self._resumed: dict[str, Optional[Mapping[str, Any]]] = {}  # ended trials not planned yet
        self._law_cells, self._law_kind = (0, 0), ""  # where the hyperparameter laws came from
        self._surface: Optional[SurfaceFit] = None  # transfer: the joint fit behind the laws
        self.checks: list[dict[str, Any]] = []  # transfer: the law checks near the target and what they found

    # ---- the planner interface -------------------------------------------------------------
    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out (Tune's num_samples)."""
        n = sum(len(c.trials) for c in self.cells)
        return min(n, self.config.max_trials) if self.config.max_trials else n

    def next_trial(self) -> Union[PlannedTrial, str, None]:
        """The next trial to run, WAIT until a running trial reports, or None when the search is over."""
        if self.stopped:
            return None
        if self.config.max_trials is not None and len(self.handed) >= self.config.max_trials:
            return self._stop(f"max_trials ({self.config.max_trials}) handed out")
        for _ in range(len(self.cells) + 2):
            for cell in self._open_cells():
                trial = self._from_cell(cell)
                if trial is not None:
                    return trial
            if self.stopped:
                return None
            if len(self._open_cells()) >= self.config.max_open_cells:
                break
            choice = self._choose_cell()
            if choice is None or choice == WAIT:
                break
            self._open(*choice)
        if self._running():
            return WAIT
        if self.stopped:
            return None
        return self._stop(self._why_done())

    def observe(self, trial_id: str, result: Optional[Mapping[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed)."""
        where = self._where.get(trial_id)
        if where is None:
            return
        cell, p = where
        if p not in cell.running:
            return  # not handed out by this planner (or observed twice)
        cell.running.discard(p)
        status, loss = outcome(result)
        if status == "ok":
            cell.loss[p] = loss
        else:
            cell.bad[p] = status
            if status == "diverged":
                cell.censor(p)
        self._settle(cell)

    def runnable(self) -> list[PlannedTrial]:
        """Trials handed out so far plus those the open cells would hand out next (for the display)."""
        out = list(self.handed)
        seen = {t.trial_id for t in out}
        for cell in self._open_cells():
            for p in self._ready(cell):
                t = cell.trials[p]
                if t.trial_id not in seen:
                    out.append(t)
                    seen.add(t.trial_id)
        return out

    def resume(self, results: Mapping[str, Optional[Mapping[str, Any]]]) -> None:
        """Replay finished trials of an earlier run of this sweep (their compute is committed)."""
        for tid, result in results.items():
            where = self._where.get(tid)
            if where is None:  # planned as the search went (a law point): taken when re-planned
                self._resumed[tid] = result
                continue
            cell, p = where
            if cell.state == "closed":
                self._opened += 1
                cell.state, cell.order, cell.start_from = "open", self._opened, "resumed"
            if p in cell.running or p in cell.loss or p in cell.bad:
                continue
            cell.running.add(p)
            cell.runs += 1
            self.committed += cell.trials[p].flops
            self.handed.append(cell.trials[p])
            self.observe(tid, result)

    # ---- answers ---------------------------------------------------------------------------
    def cell_results(self) -> list[dict[str, Any]]:
        """Every cell touched so far: state, runs, best (lr, batch, loss)."""
        return [c.public() for c in self.cells if c.state != "closed"]

    def estimate(self) -> list[dict[str, Any]]:
        """Per target C: N*, D*, L* with intervals from the current fit, and lr*, batch* from the law."""
        if self.fit is None:
            return []
        out = []
        fr = self.fit.law.frontier(self.targets)
        ivs = self.fit.intervals.get("budgets", {})
        widths = self._widths()
        for k, C in enumerate(self.targets):
            n, d = float(fr["N_opt"][k]), float(fr["D_opt"][k])
            lr, batch = self.predict_hparams(n, d)
            out.append({"budget": float(C), "N": n, "D": d, "predicted_loss": float(fr["loss_opt"][k]),
                        "lr": lr, "batch": batch, "intervals": ivs.get(str(float(C)), {}),
                        "N_rel_width": widths[k][0], "loss_rel_width": widths[k][1]})
        return out

    def laws(self) -> dict[str, Any]:
        """The laws learned so far (JSON-clean)."""
        return {"chinchilla": self.fit.law.params if self.fit else None,
                "lr": asdict(self.lr_law) if self.lr_law else None,
                "batch": asdict(self.batch_law) if self.batch_law else None}

    # ---- cell search -----------------------------------------------------------------------
    def _open_cells(self) -> list[_Cell]:
        return sorted((c for c in self.cells if c.state == "open"), key=lambda c: c.order)

    def _running(self) -> bool:
        return any(c.running for c in self.cells)

    def _ready(self, cell: _Cell) -> list[Point]:
        """Points of `cell` that may start now (no side effects)."""
        if cell.queue:
            return [p for p in cell.queue if cell.available(p) and not cell.tried(p)]
        best = cell.best()
        if best is None:
            if cell.running:
                return []
            misses = sum(1 for r in cell.bad.values() if r in ("diverged", "stopped", "failed"))
            if misses >= self.config.scan_points:
                return []
            # Nothing finite yet: the untried point nearest the start, lower lr first (the usual
            # reason is divergence, and censoring already removed the larger lrs).
            left = [p for p in cell.trials if cell.available(p) and not cell.tried(p)]
            s = cell.start or (0, 0)
            left.sort(key=lambda p: (abs(p[0] - s[0]) + abs(p[1] - s[1]), p[0], p[1]))
            return left[:1]
        square = self.config.neighbourhood == "square"
        return [q for q in cell.neighbours(best, square) if not cell.tried(q)]

    def _from_cell(self, cell: _Cell) -> Optional[PlannedTrial]:
        """Hand out the cell's next ready point that fits the budget (None: nothing now)."""
        while True:
            ready = self._ready(cell)
            if not ready:
                self._settle(cell)
                return None
            p = ready[0]
            t = cell.trials[p]
            if self.budget is not None and self.committed + t.flops > self.budget * (1 + 1e-12):
                cell.bad[p] = "budget"
                cell.queue = [q for q in cell.queue if q != p]
                continue
            if t.trial_id in self._resumed:  # ended in an earlier run of this sweep: not run again
                cell.running.add(p)
                cell.runs += 1
                self.committed += t.flops
                self.handed.append(t)
                self.observe(t.trial_id, self._resumed.pop(t.trial_id))
                continue
            if p not in cell.why:
                b = cell.best()
                cell.why[p] = (f"neighbour of the cell's best point (lr={cell.trials[b].lr:.3g}, "
                               f"batch={cell.trials[b].batch}, loss={cell.loss[b]:.5g})" if b
                               else "no finite loss in the cell yet: nearest untried point to the start")
            cell.running.add(p)
            cell.runs += 1
            self.committed += t.flops
            self.handed.append(t)
            self._log(cell, p, t)
            return t

    def _settle(self, cell: _Cell) -> None:
        """Leave the queue phase when it has returned; resolve the cell when nothing is left to run."""
        if cell.state != "open":
            return
        if cell.queue and all(cell.tried(p) and p not in cell.running or not cell.available(p) for p in cell.queue):
            cell.queue = []
        if cell.queue or cell.running or self._ready(cell):
            return
        cell.state = "resolved" if cell.best() is not None else "abandoned"
        if cell.open_info.get("check"):
            self._check_found(cell)
        if cell.state == "resolved":
            self._refit()

    def _open(self, cell: _Cell, info: dict[str, Any]) -> None:
        """Start searching `cell`: a coarse lr scan without a law, else the law's point and its neighbours."""
        self._opened += 1
        cell.state, cell.order, cell.open_info = "open", self._opened, info
        jm = len(cell.batches) // 2
        if self.lr_law is None:
            avail = [i for i in range(len(cell.lrs)) if cell.available((i, jm))]
            if not avail:
                avail = sorted({p[0] for p in cell.trials})
                jm = min((p[1] for p in cell.trials if p[0] in avail), key=lambda j: abs(j - jm))
            k = min(self.config.scan_points, len(avail))
            picks = [avail[int(round(x))] for x in np.linspace(0, len(avail) - 1, k)] if k > 1 else \
                [avail[len(avail) // 2]]
            cell.queue = [p for p in dict.fromkeys((i, jm) for i in picks) if cell.available(p)]
            cell.start, cell.start_from = (picks[len(picks) // 2], jm), "coarse scan"
            for p in cell.queue:
                cell.why[p] = f"initial design: coarse lr scan ({len(cell.queue)} lrs, batch {cell.batches[jm]})"
            return
        lr, batch = self.predict_hparams(cell.N, cell.D)
        j = min(range(len(cell.batches)), key=lambda j: (abs(math.log(cell.batches[j] / batch)), j))
        pts = [p for p in cell.trials if cell.available(p)]
        if not pts:
            cell.state = "abandoned"
            return
        start = min(pts, key=lambda p: (abs(p[1] - j), abs(math.log(cell.lrs[p[0]] / lr)), p))
        cell.start, cell.start_from = start, self._law_source()
        if info.get("check") and self._check_lattice(cell, info["law_lr"], info["law_batch"]):
            return
        if self.transfer and cell.key not in self._init_keys and self._law_point(cell, lr, batch):
            return
        square = self.config.neighbourhood == "square"
        cell.queue = [start] + cell.neighbours(start, square)
        cell.why[start] = f"law's point: lr*={lr:.3g}, batch*={batch:.0f} ({cell.start_from})"
        for q in cell.queue[1:]:
            cell.why[q] = "neighbour of the law's point (local-minimum certificate)"

    def _law_point(self, cell: _Cell, lr: float, batch: float) -> bool:
        """Transfer: the cell's one run, at the learned (lr*, batch*); its lattice is the fallback
        should that run diverge (searched from the lattice point nearest the law's, lower lr first)
        or not fit the cluster's resources (False: search the lattice, whose shapes were checked)."""
        seq = self.spec.model.seq_len
        b = max(_min_batch(self.spec), int(round(batch / seq)) * seq)
        any_t = next(iter(cell.trials.values()))
        try:
            t = plan_trial(self.spec, any_t.n_target, cell.key[1], float(f"{lr:.4g}"), b, any_t.seed)
        except SpecError as exc:
            cell.open_info = {**cell.open_info, "law_point_refused": str(exc)}
            cell.start_from += f" (the law's batch {b} does not fit: lattice search)"
            return False
        cell.trials[LAW_POINT] = t
        self._where[t.trial_id] = (cell, LAW_POINT)
        self.trials.append(t)
        cell.start_from = "law point (" + self._law_source() + ")"
        cell.queue = [LAW_POINT]
        cell.why[LAW_POINT] = (f"transfer: the learned law's point lr*={lr:.3g}, batch*={batch:.0f} "
                               f"(run at batch {b}; {self._law_source()})")
        return True

    # ---- law checks near the target (transfer) ----------------------------------------------
    def _next_check(self, closed: list[_Cell]) -> Union[tuple[_Cell, dict[str, Any]], str, None]:
        """The next law check, WAIT while one is being searched, or None (no check due or affordable).

        The laws are learned on the smallest sizes and extrapolated decades; the only direct test of
        that extrapolation is a bracket of runs around the law's point at a large size. A check is
        due while fewer than `law_checks` were made and either none was made yet or the last one
        found the law wrong (its point was not the best of the bracket)."""
        if any(c.state == "open" and c.open_info.get("check") for c in self.cells):
            return WAIT  # later cells run at the laws the check is testing
        if len(self.checks) >= self.config.law_checks:
            return None
        if self.checks and not self.checks[-1]["misfit"]:
            return None
        # 5 runs: the law's point and its lr and batch neighbours (the certificate of a local minimum).
        cap = self.config.check_budget * self.grid_flops
        est = self.fit.law.frontier([c.C for c in closed])["N_opt"]
        by_size: dict[int, list[tuple[float, _Cell]]] = {}
        for c, n_opt in zip(closed, est):
            if 5 * c.flops <= cap:
                by_size.setdefault(c.key[0], []).append((abs(math.log(c.N / float(n_opt))), c))
        if not by_size:
            return None
        size = max(by_size)
        # The check tests the laws' reach in N: any cell of that size near the fitted frontier (N within
        # `prune_band` of N*(its C)) will do, so the cheapest of them; else the one nearest the frontier.
        near = [x for x in by_size[size] if x[0] <= math.log(self.config.prune_band)]
        dist, cell = (min(near, key=lambda x: (x[1].flops, x[0])) if near
                      else min(by_size[size], key=lambda x: (x[0], x[1].flops)))
        lr, batch = self.law_hparams(cell.N, cell.D)
        edge = max(c.N for c in self._law_fitted_cells())
        return cell, {"why": (f"law check {len(self.checks) + 1}: the largest size whose bracket costs ≤ "
                              f"{self.config.check_budget:.1%} of the full grid, its cheapest cell near the fitted "
                              f"frontier (N/N*(C) = {math.exp(dist):.2f}); tests lr*={lr:.3g}, batch*={batch:.0f} "
                              f"extrapolated from the searched cells"
                              + ("" if not self.checks else "; the last check found the law wrong")),
                      "check": True, "law_lr": lr, "law_batch": batch, "alternatives": len(by_size[size]),
                      "reach": max(math.log(cell.N / edge), 0.5 * math.log(self._lr_step()))}

    def _lr_step(self) -> float:
        """The spec's learning-rate resolution: the geometric step of its lr lattice (≥ 1.5)."""
        lrs = self.spec.lrs()
        if len(lrs) < 2:
            return 2.0
        return max(1.5, float(math.exp(math.log(lrs[-1] / lrs[0]) / (len(lrs) - 1))))

    def _check_lattice(self, cell: _Cell, lr: float, batch: float) -> bool:
        """Replace the check cell's lattice by one centred on the law's point: lr × step^(−2..2),
        batch × ladder^(−1..1); queue the point and its cross. The cell search then walks to the
        lattice's local minimum, so a wrong law is followed as far as the lattice reaches."""
        seq, lo = self.spec.model.seq_len, _min_batch(self.spec)
        k, f = self._lr_step(), self.config.batch_ladder
        lrs = [float(f"{lr * k ** i:.4g}") for i in range(-2, 3)]
        bs = sorted({max(lo, int(round(batch * f ** j / seq)) * seq) for j in (-1, 0, 1)})
        any_t = next(iter(cell.trials.values()))
        trials: dict[Point, PlannedTrial] = {}
        for i, x in enumerate(lrs):
            for j, b in enumerate(bs):
                try:
                    t = plan_trial(self.spec, any_t.n_target, cell.key[1], x, b, any_t.seed)
                except SpecError:
                    continue
                if in_cell(t.D, any_t.cell):
                    trials[(i, j)] = t
        jc = min(range(len(bs)), key=lambda j: abs(math.log(bs[j] / batch)))
        centre = (2, jc)
        if centre not in trials:
            cell.open_info = {**cell.open_info, "check_refused": "the law's point does not fit the resources"}
            return False
        cell.lrs, cell.batches, cell.trials = lrs, bs, trials
        cell.flops = max(t.flops for t in trials.values())
        for p, t in trials.items():
            self._where[t.trial_id] = (cell, p)
            self.trials.append(t)
        cell.start, cell.start_from = centre, "law check (" + self._law_source() + ")"
        cell.queue = [centre] + cell.neighbours(centre, self.config.neighbourhood == "square")
        cell.why[centre] = (f"law check: the learned point lr*={lr:.3g}, batch*={batch:.0f} at a large size "
                            f"({self._law_source()})")
        for q in cell.queue[1:]:
            cell.why[q] = (f"law check: bracket of the law's point (lr ×{k:.2g}^±1, batch ×{f:.2g}^±1); "
                           "the law is wrong here if this beats it")
        return True

    def _check_found(self, cell: _Cell) -> None:
        """Record what a law check found: where the cell's optimum is against the law's point."""
        info = cell.open_info
        rec: dict[str, Any] = {"N": cell.N, "D": cell.D, "runs": cell.runs, "law_lr": info.get("law_lr"),
                               "law_batch": info.get("law_batch"), "reach": info.get("reach"), "misfit": False}
        b = cell.best()
        if b is not None and cell.start is not None:
            x, y, _, _ = _cell_optimum(cell)
            rec.update(best_lr=cell.trials[b].lr, best_batch=cell.trials[b].batch, best_loss=cell.loss[b],
                       optimum_lr=math.exp(x), optimum_batch=math.exp(y),
                       law_point_loss=cell.loss.get(cell.start))
            # The law is wrong here when a bracket point beat its point by more than the noise of a loss
            # (a flat batch axis lets noise pick a neighbour: that is no evidence against the law).
            at_law = cell.loss.get(cell.start)
            rec["misfit"] = b != cell.start and (at_law is None or at_law / cell.loss[b] - 1.0 > self._noise())
        rec["why"] = ((f"law check at N={cell.N:.3g}, D={cell.D:.3g}: the best point (lr={rec.get('best_lr', 0):.3g}, "
                       f"batch={rec.get('best_batch')}) is not the law's (lr={rec['law_lr']:.3g}, "
                       f"batch={rec['law_batch']:.0f}): the laws are refitted with this cell, and another check follows"
                       if rec["misfit"] else
                       f"law check at N={cell.N:.3g}, D={cell.D:.3g}: the law's point is the best of its bracket"))
        self.checks.append(rec)
        self.decisions.append({"action": "check", "trial_id": None, "committed_flops": self.committed, **rec})

    # ---- choosing cells --------------------------------------------------------------------
    def _choose_cell(self) -> Union[tuple[_Cell, dict[str, Any]], str, None]:
        closed = [c for c in self.cells if c.state == "closed" and self._affordable(c)]
        if not closed:
            return None
        resolved = [c for c in self.cells if c.state == "resolved"]
        init_left = [c for c in closed if c.key in self._init_keys]
        if init_left:
            scanning = sum(1 for c in self.cells if c.start_from == "coarse scan" and c.state == "open")
            if not resolved and scanning >= self.config.init_scans:
                return WAIT  # another blind scan would waste runs: wait for the first optimum
            return init_left[0], {"why": "initial design (smallest sizes, cheapest first)",
                                  "alternatives": len(init_left)}
        if self.transfer and any(c.state == "open" and c.key in self._init_keys for c in self.cells):
            return WAIT  # transfer: the laws come from the whole initial design
        if self.transfer and self.fit is not None and self.fit.samples is not None:
            check = self._next_check(closed)
            if check is not None:
                return check
        if self.fit is None or self.fit.samples is None:
            if self._open_cells():
                return WAIT  # the L(N, D) fit needs these cells' results
            return closed[0], {"why": "L(N, D) not fitted yet" + (f" ({self._fit_error})" if self._fit_error else "")
                               + ": cheapest remaining cell", "alternatives": len(closed)}
        return self._acquire(closed)

    def _affordable(self, cell: _Cell) -> bool:
        return self.budget is None or self.committed + cell.flops <= self.budget * (1 + 1e-12)

    def _acquire(self, closed: list[_Cell]) -> Union[tuple[_Cell, dict[str, Any]], None]:
        """The closed cell with the largest expected uncertainty reduction per FLOP, pruning far cells."""
        S = self.fit.samples
        cfg = self.config
        # Pruning: in what fraction of replicates is the cell's N within prune_band of N*(its C)?
        Cs = np.array([c.C for c in closed])
        n_star = frontier_samples(S, Cs)["N_opt"]  # (K, J)
        logN = np.log([c.N for c in closed])
        p_near = np.mean(np.abs(logN[None, :] - np.log(n_star)) <= math.log(cfg.prune_band), axis=0)
        keep = (p_near >= cfg.prune_below) | (not self._identified())
        pruned = [c for c, k in zip(closed, keep) if not k]
        kept = [c for c, k in zip(closed, keep) if k]
        info_pruned = {"pruned": len(pruned),
                       "pruned_cells": [{"N": c.N, "D": c.D, "p_near": float(p)}
                                        for c, p, k in zip(closed, p_near, keep) if not k][:20]}
        if not kept:
            return None
        gains = self._gains(kept, self._open_cells())
        runs = self._expected_runs()
        scores = gains / (np.array([c.flops for c in kept]) * runs)
        k = int(np.argmax(scores))
        why = "largest expected reduction of the target-optimum uncertainty per FLOP"
        if not scores[k] > 0:  # nothing left to learn at the weights used: take the cheapest cell
            k = 0
        elif self.transfer and self._streak > 0:
            # The stopping rule held on the last fit and needs `stop_streak` in a row: a confirmation,
            # which the cheapest cell near the frontier gives as well as the most informative one.
            k = int(np.argmin([c.flops for c in kept]))
            why = (f"the stopping rule held on the last fit ({self._streak} of {self.config.stop_streak}): "
                   "confirm it with the cheapest cell near the frontier")
        cell = kept[k]
        order = np.argsort(-scores)
        return cell, {
            "why": why,
            "expected_gain": float(gains[k]), "score": float(scores[k]), "expected_runs": runs,
            "p_near_frontier": float(p_near[closed.index(cell)]), "alternatives": len(kept),
            "runner_up": ({"N": kept[order[1]].N, "D": kept[order[1]].D, "expected_gain": float(gains[order[1]])}
                          if len(kept) > 1 else None),
            **info_pruned,
        }

    def _gains(self, cands: list[_Cell], open_cells: list[_Cell]) -> np.ndarray:
        """Expected reduction of Σ_q w_q·Var(q) from observing each candidate (cells being searched conditioned on)."""
        S = self.fit.samples
        fr = frontier_samples(S, self.targets)
        Q = np.concatenate([np.log(fr["N_opt"]), np.log(fr["loss_opt"])], axis=1)  # (K, 2T)
        F = _log_pred(S, [c.N for c in cands + open_cells], [c.D for c in cands + open_cells])
        Z = _winsorise(np.concatenate([Q, F], axis=1))
        Z = Z - Z.mean(axis=0)
        cov = Z.T @ Z / max(len(Z) - 1, 1)
        nq, nc = Q.shape[1], len(cands)
        sig2 = self._noise() ** 2
        o = np.arange(nq + nc, cov.shape[0])
        if len(o):  # condition on the cells already being searched (their results will arrive)
            Soo = cov[np.ix_(o, o)] + sig2 * np.eye(len(o))
            cov = cov - cov[:, o] @ np.linalg.solve(Soo, cov[o, :])
        T = len(self.targets)
        z = _z(self.config.level)
        tol = np.array([self.config.tolerance] * T + [self.config.loss_tolerance] * T)
        target_var = (np.maximum(tol, 1e-9) / (2 * z)) ** 2  # variance at which the interval meets the tolerance
        var_q = np.diag(cov)[:nq]
        w = np.where(var_q > target_var, 1.0 / target_var, 0.0)
        if not w.any():
            w = 1.0 / np.maximum(var_q, 1e-30)
        c_qf = cov[:nq, nq:nq + nc]  # (2T, J)
        v_f = np.diag(cov)[nq:nq + nc]
        return (w[:, None] * c_qf ** 2).sum(axis=0) / (v_f + sig2)

    def _expected_runs(self) -> float:
        if self.transfer:
            return 1.0  # every cell after the initial design runs once
        done = [c.runs for c in self.cells if c.state == "resolved" and c.start_from not in ("coarse scan", "resumed")]
        base = 5.0 if self.config.neighbourhood == "cross" else 9.0
        return float(np.mean(done)) if done else base

    def _noise(self) -> float:
        """Relative noise of a cell's best loss: the fit's robust residual scale, floored."""
        pts = self._fit_points()
        if self.fit is None or len(pts[0]) < 6:
            return self.config.noise
        r = np.log(pts[2]) - np.log(self.fit.law.predict(pts[0], pts[1]))
        mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        return max(self.config.noise, mad)

    # ---- laws ------------------------------------------------------------------------------
    def _fit_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cells = [c for c in self.cells if c.state == "resolved"]
        return (np.array([c.N for c in cells]), np.array([c.D for c in cells]),
                np.array([c.loss[c.best()] for c in cells]))

    def _refit(self) -> None:
        """Refit the hyperparameter laws and L(N, D) on the resolved cells; check the stopping rule."""
        self._fit_hparams()
        N, D, L = self._fit_points()
        if len(N) < self.config.min_fit_cells:
            return
        try:
            self.fit = self._fit_loss(N, D, L)
            self._fit_error = None
        except ValueError as exc:
            self.fit, self._fit_error = None, str(exc)
            return
        if self.config.regret_tolerance is not None:
            # The risk comes from a bootstrap that is overconfident while few cells are fitted, so the
            # N*(C) interval must also be narrower than `tolerance`.
            regrets, widths = self.regret_risk(), self._widths()
            done = max(regrets) <= self.config.regret_tolerance and all(wn <= self.config.tolerance for wn, _ in widths)
            why = (f"risk of the (N*, D*) proposal below the regret tolerance ({self.config.regret_tolerance:.3%}, "
                   f"{self.config.level:.0%} level) and N* intervals narrower than {self.config.tolerance}: "
                   + "; ".join(f"C={c:.3g}: {r:.3%}, N* {wn:.3f}" for c, r, (wn, _) in zip(self.targets, regrets, widths)))
        else:
            widths = self._widths()
            done = bool(widths) and all(wn <= self.config.tolerance and wl <= self.config.loss_tolerance
                                        for wn, wl in widths)
            why = "target intervals narrower than the tolerance: " + "; ".join(
                f"C={c:.3g}: N* {wn:.3f}, L* {wl:.4f}" for c, (wn, wl) in zip(self.targets, widths))
        if self.transfer and any(c.state in ("closed", "open") for c in self.cells if c.key in self._init_keys):
            done = False  # the laws the proposal uses come from the whole initial design
        self._streak = self._streak + 1 if done and self._identified() else 0
        if self._streak >= self.config.stop_streak:
            self._stop(why)

    def _fit_loss(self, N: np.ndarray, D: np.ndarray, L: np.ndarray) -> ChinchillaFit:
        """The search's L(N, D) fit with bootstrap replicates (`.law.frontier`, `.law.predict`,
        `.samples` rows (E, A, B, α, β)). One line to swap for another form's fit."""
        return fit_chinchilla(N, D, L, bootstrap=self.config.bootstrap, seed=self.seed,
                              budgets=self.targets, level=self.config.level)

    def loss_backtest(self) -> Optional[dict[str, Any]]:
        """Backtest of L(N, D) by size: fit the searched cells without the largest size, predict its
        cells; the same for the Kaplan form (`laws.kaplan`). A form that is right predicts the held-out
        size within the noise; the bootstrap's intervals assume the form, so this is the check that
        they may be trusted. None with fewer than 4 sizes (3 left to fit on)."""
        from .laws.kaplan import fit_kaplan, law_from_result

        N, D, L = self._fit_points()
        sizes = sorted(set(N.tolist()))
        if len(sizes) < 4:
            return None
        held = N == sizes[-1]
        # The stated noise, not the fit's residual scale: a wrong form inflates its own residuals.
        out: dict[str, Any] = {"held_out_N": sizes[-1], "cells": int(held.sum()), "noise": self.config.noise}
        for name, fit in (("chinchilla", lambda n, d, l: fit_chinchilla(n, d, l).law),
                          ("kaplan", lambda n, d, l: law_from_result(fit_kaplan(n, d, l)))):
            try:
                law = fit(N[~held], D[~held], L[~held])
                err = np.log(L[held]) - np.log(law.predict(N[held], D[held]))
                out[name] = float(np.sqrt(np.mean(err ** 2)))
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                out[name] = None
        ch = out["chinchilla"]
        # Beyond twice the stated noise of a loss: more than noise can explain (a warning, not a rule yet).
        out["misfit"] = ch is not None and ch > 2.0 * out["noise"]
        out["better_form"] = min((k for k in ("chinchilla", "kaplan") if out[k] is not None), key=lambda k: out[k],
                                 default=None)
        return out

    def _identified(self) -> bool:
        """Whether the resolved cells span min_sizes model sizes."""
        # With two sizes the bootstrap cannot see that A/N^alpha and E trade off: its intervals are
        # narrow and wrong, so neither pruning nor the tolerance may act on them yet.
        return len({c.key[0] for c in self.cells if c.state == "resolved"}) >= self.config.min_sizes

    def regret_risk(self) -> list[float]:
        """Per target C: the `level` quantile over the bootstrap replicates of the regret of today's
        (N*, D*) proposal, each replicate's law taken as the truth (its loss at our point over its own
        optimum, minus 1). What stopping now may cost, in the frontier's own units: a flat frontier
        tolerates a wide N* interval, a steep one does not."""
        if self.fit is None or self.fit.samples is None:
            return []
        S = self.fit.samples
        est = self.fit.law.frontier(self.targets)
        opt = frontier_samples(S, self.targets)["loss_opt"]  # (K, T)
        at_ours = np.exp(_log_pred(S, est["N_opt"], est["D_opt"]))  # (K, T)
        return [float(np.quantile(at_ours[:, k] / opt[:, k] - 1.0, self.config.level)) for k in range(len(self.targets))]

    def _widths(self) -> list[tuple[float, float]]:
        """Relative widths of the N*(C) and L*(C) intervals at each target."""
        if self.fit is None or self.fit.samples is None:
            return []
        fr = frontier_samples(self.fit.samples, self.targets)
        est = self.fit.law.frontier(self.targets)
        lo, hi = 50 * (1 - self.config.level), 50 * (1 + self.config.level)
        out = []
        for k in range(len(self.targets)):
            a, b = np.percentile(fr["N_opt"][:, k], [lo, hi])
            c, d = np.percentile(fr["loss_opt"][:, k], [lo, hi])
            out.append((float((b - a) / est["N_opt"][k]), float((d - c) / est["loss_opt"][k])))
        return out

    def _fit_hparams(self) -> None:
        """lr* = c·N^a·D^b and batch* = c'·D^d by ridge regression over the resolved cells' optima."""
        rows = [(c,) + _cell_optimum(c) for c in self.cells
                if c.state == "resolved" and LAW_POINT not in c.trials]  # a single run locates no optimum
        if not rows:
            return
        lam = self.config.hparam_ridge
        # An optimum on the lattice's edge along an axis only bounds the true optimum (it may lie
        # beyond the grid); regressing on it flattens the law, so such cells sit out that axis's fit.
        lr_rows = [r for r in rows if r[3]] or rows
        b_rows = [r for r in rows if r[4]] or rows
        X = np.log([[r[0].N, r[0].D] for r in lr_rows])
        c, a, b = _ridge(X, np.array([r[1] for r in lr_rows]), lam)
        cb, db = _ridge(np.log([[r[0].D] for r in b_rows]), np.array([r[2] for r in b_rows]), lam)
        self.lr_law = LrLaw(float(math.exp(c)), float(a), float(b))
        self.batch_law = BatchLaw(float(math.exp(cb)), float(db))
        self._law_cells = (len(lr_rows), len(b_rows))
        self._surface = None  # until the joint fit below succeeds on these cells
        if self.transfer:
            self._fit_surface([r[0] for r in rows], (c, a, b, cb, db))

    def _fit_surface(self, cells: list[_Cell], start: tuple[float, ...]) -> None:
        """Transfer: refine the laws by one bowl shared by every run of the searched cells
        (`laws.hparam_surface`); the laws are extrapolated decades, so every run should count."""
        runs = [(c.N, c.D, c.trials[p].lr, c.trials[p].batch, loss) for c in cells for p, loss in c.loss.items()]
        try:
            fit = fit_surface(*zip(*runs), start=start, asymmetric=bool(self.config.hedge))
        except (HparamError, ValueError, np.linalg.LinAlgError):
            return  # too few cells or runs yet: keep the ridge laws
        self.lr_law, self.batch_law, self._surface = fit.lr_law, fit.batch_law, fit
        self._law_kind = f"one bowl over {fit.n_runs} runs of {fit.n_cells} cells"

    def hparam_intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        """Intervals of lr*, batch* at (N, D) when the laws come from the joint surface (transfer):
        the fit's (delta method), lr*'s widened to `lr_sigma` once law checks measured the law's
        extrapolation error (so a hedged lr, at most 0.9 σ off, stays inside a 90 % interval)."""
        if self._surface is None:
            return None
        iv = self._surface.intervals(N, D, level)
        if iv is not None and self.checks:
            sd, lr = self.lr_sigma(N, D), iv["lr"]["estimate"]
            z = _z(level)
            if lr * math.exp(z * sd) > iv["lr"]["high"]:
                iv["lr"] = {**iv["lr"], "low": lr * math.exp(-z * sd), "high": lr * math.exp(z * sd),
                            "calibrated_by_checks": True}
        return iv

    def predict_hparams(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        """lr and batch to run at (N, D): the laws learned so far (None, None before there are any),
        the lr hedged towards the flatter side of an asymmetric bowl (`hedge`, `lr_hedge`)."""
        lr, batch = self.law_hparams(N, D)
        if lr is None:
            return None, None
        return lr * self.lr_hedge(N, D)["factor"], batch

    def law_hparams(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        """lr*(N, D) and batch*(D) as the learned laws state them (None, None before there are any)."""
        if self.lr_law is None:
            return None, None
        return float(self.lr_law(N, D)), float(self.batch_law(D))

    def lr_sigma(self, N: float, D: float) -> float:
        """Standard deviation of log lr*(N, D) as predicted by the laws: the surface fit's own
        (delta method) and, once a law check has measured the law's error at a size beyond the
        cells it was fitted on, that error scaled by how far (N, D) lies beyond the fitted sizes
        (an extrapolation error that grows with the distance, per unit of log N)."""
        sd = 0.0
        iv = self._surface.intervals(N, D, 0.6827) if self._surface is not None else None
        if iv is not None:
            sd = math.log(iv["lr"]["high"] / iv["lr"]["estimate"])
        errs = [(math.log(c["optimum_lr"] / c["law_lr"]), c["reach"]) for c in self.checks
                if c.get("optimum_lr") and c.get("law_lr") and c.get("reach")]
        if errs:
            per_unit = math.sqrt(sum((e / r) ** 2 for e, r in errs) / len(errs))
            edge = max(c.N for c in self._law_fitted_cells()) if self._law_fitted_cells() else N
            sd = math.hypot(sd, per_unit * max(0.0, math.log(N / edge)))
        return sd

    def lr_hedge(self, N: float, D: float) -> dict[str, float]:
        """The lr factor that minimises the expected loss over the lr law's uncertainty at (N, D) when
        the bowl is steeper above lr* (`lr_asym` = r): with u = log lr − log lr* ~ N(δ, σ²), the
        loss grows as u² below lr* and r·u² above, so the best δ is ≤ 0 (0 for a symmetric bowl or
        a certain law). `hedge` off, or no joint surface yet: factor 1."""
        out = {"factor": 1.0, "sigma": 0.0, "asym": 1.0, "shift": 0.0}
        if not self.config.hedge or self._surface is None:
            return out
        r, sd = float(self._surface.lr_asym), self.lr_sigma(N, D)
        out.update(sigma=sd, asym=r)
        if sd <= 0 or abs(r - 1.0) < 1e-9:
            return out
        delta = _hedge_shift(sd, r)
        out.update(factor=math.exp(delta), shift=delta)
        return out

    def _law_fitted_cells(self) -> list[_Cell]:
        """The searched cells the hyperparameter laws are fitted on."""
        return [c for c in self.cells if c.state == "resolved" and LAW_POINT not in c.trials]

    def _law_source(self) -> str:
        if self._surface is not None:
            return f"laws from {self._law_kind}"
        n_lr, n_b = self._law_cells
        return f"lr law from {n_lr}, batch law from {n_b} resolved cells"

    # ---- bookkeeping -----------------------------------------------------------------------
    def _log(self, cell: _Cell, p: Point, t: PlannedTrial) -> None:
        info = cell.open_info
        self.decisions.append({
            "action": "run", "trial_id": t.trial_id, "N": t.N, "D": t.D, "lr": t.lr, "batch": t.batch,
            "flops": t.flops, "committed_flops": self.committed, "why": cell.why.get(p, ""),
            "cell": {"N": cell.N, "D": cell.D, "C": cell.C, "opened_because": info.get("why"),
                     "start_from": cell.start_from},
            "expected_gain": info.get("expected_gain"), "score": info.get("score"),
            "alternatives": info.get("alternatives", 0), "pruned": info.get("pruned", 0),
            "pruned_cells": info.get("pruned_cells", []) if cell.runs == 1 else [],
            "p_near_frontier": info.get("p_near_frontier"),
        })

    def _stop(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            entry = {"action": "stop", "trial_id": None, "why": why, "committed_flops": self.committed,
                     "trials": len(self.handed), "estimate": self.estimate()}
            if self.transfer:
                bt = self.loss_backtest()
                entry["loss_backtest"] = bt
                entry["law_checks"] = list(self.checks)
                if bt is not None and bt["misfit"]:
                    entry["why"] = why + (
                        f"; WARNING: L(N, D) of Chinchilla form misses the largest size by {bt['chinchilla']:.2%} "
                        f"in a backtest (noise {bt['noise']:.2%}; Kaplan form {bt['kaplan'] or float('nan'):.2%}): "
                        "the N* interval assumes the form and is too narrow")
            self.decisions.append(entry)
        return None

    def _why_done(self) -> str:
        closed = [c for c in self.cells if c.state == "closed"]
        if not closed:
            return "every cell searched"
        if not any(self._affordable(c) for c in closed):
            return "compute budget spent"
        return "every remaining cell is pruned (far from the frontier in nearly all replicates)"


# ------------------------------------------------------------------------------------ helpers


def _min_batch(spec: SweepSpec) -> int:
    """The smallest batch (tokens) a trial of this spec can run: a sequence per worker."""
    seq = spec.model.seq_len
    workers = max((w for w in (spec.resources.settings(n)["workers"][0] for n in spec.model.sizes())
                   if w != "auto"), default=1)
    return seq * workers


def _fits(spec: SweepSpec, sizes: Iterable[int], batch: int) -> bool:
    """Whether trials of these sizes at `batch` pass the resource check (`planner.trial_resources`)."""
    try:
        for n in sizes:
            trial_resources(spec, n, batch)
    except SpecError:
        return False
    return True


def batch_ladder(spec: SweepSpec, factor: float) -> list[int]:
    """The spec's batches extended below the smallest (down to one sequence per worker) and one
    step above the largest, by `factor`, in whole sequences: the transfer design's batch lattice."""
    seq, lo = spec.model.seq_len, _min_batch(spec)
    out = set(spec.batches())
    b = min(out) / factor
    while b >= lo:
        out.add(int(round(b / seq)) * seq)
        b /= factor
    out.add(int(round(max(out) * factor / seq)) * seq)
    return sorted(x for x in out if x >= lo)


def _cell_optimum(cell: _Cell) -> tuple[float, float, bool, bool]:
    """(log lr*, log batch*) of a resolved cell and whether each lies inside the lattice (not on its edge).

    The best point, refined by a parabola through it and its neighbours along each axis.
    """
    b = cell.best()
    x, x_in = _refine(cell, b, 0, [math.log(v) for v in cell.lrs])
    y, y_in = _refine(cell, b, 1, [math.log(v) for v in cell.batches])
    return x, y, x_in, y_in


def _refine(cell: _Cell, b: Point, axis: int, grid: list[float]) -> tuple[float, bool]:
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


def _hedge_shift(sigma: float, r: float) -> float:
    """δ minimising E[u²·(1 + (r − 1)·1{u > 0})] for u ~ N(δ, σ²) (the expected loss of an lr
    log-offset δ from an uncertain lr* on a bowl r times steeper above it).

    >>> round(_hedge_shift(0.4, 3.0) / 0.4, 2), _hedge_shift(0.4, 1.0)
    (-0.44, 0.0)
    """
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    if sigma <= 0 or r == 1.0:
        return 0.0

    def expected(d: float) -> float:
        above = (d * d + sigma ** 2) * norm.cdf(d / sigma) + d * sigma * norm.pdf(d / sigma)
        return d * d + sigma ** 2 + (r - 1.0) * above

    lim = 3.0 * sigma
    return float(minimize_scalar(expected, bounds=(-lim, lim), method="bounded", options={"xatol": 1e-6}).x)


def _ridge(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, ...]:
    """Intercept and slopes of y on X, slopes shrunk towards 0 (identifiable with any number of rows)."""
    mx, my = X.mean(axis=0), y.mean()
    Xc = X - mx
    slopes = np.linalg.solve(Xc.T @ Xc + max(lam, 1e-9) * np.eye(X.shape[1]), Xc.T @ (y - my))
    return (float(my - mx @ slopes), *(float(s) for s in slopes))


def _log_pred(S: np.ndarray, N: Iterable[float], D: Iterable[float]) -> np.ndarray:
    """log L_k(N_j, D_j) for every replicate k (rows) and point j (columns)."""
    N = np.asarray(list(N), dtype=np.float64)[None, :]
    D = np.asarray(list(D), dtype=np.float64)[None, :]
    E, A, B, al, be = (S[:, i:i + 1] for i in range(5))
    return np.log(E + A * N ** (-al) + B * D ** (-be))


def _winsorise(Z: np.ndarray, q: float = 5.0) -> np.ndarray:
    """Clip each column to its [q, 100 − q] percentiles: a few wild replicates must not set the covariance."""
    lo, hi = np.percentile(Z, [q, 100 - q], axis=0)
    return np.clip(Z, lo, hi)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


__all__ = ["LawGuidedPlanner", "SearchConfig", "outcome", "WAIT"]
