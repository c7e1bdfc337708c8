"""The law-guided search as a `Planner`: which trial to run next, chosen for what it teaches about
the target-budget optimum (docs/search.md).

Pure Python (no Ray, no spec: it plans on the sweep's `core.planning.design.Design`, its knobs a
frozen `SearchConfig`), deterministic given the seed and the order of `observe` calls. The
candidates are the design's grid; the search works on cells (`lattice.SearchCell`: one (N, D) with
its lattice of (lr, batch) points):

1. **Initial design.** The cells of the `init_sizes` smallest model sizes, cheapest first; the first
   `init_scans` get a coarse lr scan (no law exists yet) and the planner Waits for them.
2. **Cell search.** A cell starts at the (lr, batch) the hyperparameter laws predict
   (`cell_start`, `hparam_state`) with its lattice neighbours, then walks to the best point's untried
   neighbours until the best point is a local minimum of the lattice.
3. **Acquisition** (`choice`, `acquisition`) once `min_fit_cells` cells are resolved: L(N, D) is
   fitted with replicates, its form chosen by how well it extrapolates (`loss_law`, refitted in
   `law_state`), and the next cell is the one that most reduces the uncertainty of N*(C) and L*(C)
   per FLOP; far cells are pruned.
4. **Stop** (`stopping`, counted in `law_state`) on the regret risk of the proposal or the width of the
   target intervals, or when the budget, `max_trials` or the cells run out.

With `strategy: transfer` the initial design is the whole calibration (every cell of the smallest
sizes, on a batch lattice extended by `batch_ladder`) and every later cell runs **once** at the
learned (lr*, batch*); law checks near the target (`checks`) test the extrapolated laws. Every
hand-out, check and the stop are explained in `decisions`. Rebuilt from the store on resume
(`resume`: the ended trials are replayed, not run again; the lattice runs a stop cut short run again
first, as planned).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..protocol import WAIT, Done, HparamAdvice, Step, Wait
from ..design import Design
from ..trial import PlannedTrial
from . import checks as law_checks, stopping
from .advice import SearchRule
from .answers import SearchAnswers
from .book import CellBook, run_decision
from .branches import Branches, corrected_loss, enabled as branching_enabled
from .cell_start import CellStart
from .choice import CellChoice
from .config import SearchConfig
from .hparam_state import HparamLaws
from .lattice import LAW_POINT, Point, SearchCell, outcome
from .law_state import SearchLaws
from .loss_law import LossLaw
from .resume import SearchResume
from .transfer import candidate_trials


class LawGuidedPlanner(SearchAnswers, SearchResume):
    """Chooses each next trial by what it teaches about the compute-optimal config at the target budgets."""

    def __init__(self, design: Design, seed: int = 0, config: Optional[SearchConfig] = None,
                 candidates: Optional[Sequence[PlannedTrial]] = None):
        self.design = design
        self.seed = int(seed)
        self.config = config if config is not None else SearchConfig()
        self.transfer = self.config.transfer
        trials = list(candidates) if candidates is not None else candidate_trials(design, self.config)
        self.book = CellBook(trials, design, design.total_flops)
        self.targets = list(design.targets) or [100.0 * max(c.C for c in self.cells)]
        sizes = sorted({c.key[0] for c in self.cells})
        self._init_keys = [c.key for c in self.cells if c.key[0] in sizes[: self.config.init_sizes]]
        self.decisions: list[dict[str, Any]] = []
        self.learned = SearchLaws(self.config, self.targets, self.seed)  # L(N, D), lr*/batch*, law checks
        self.stopped: Optional[str] = None
        self._opened = 0
        self._resumed: dict[str, Optional[Mapping[str, Any]]] = {}  # ended trials not planned yet
        self._continued: list[PlannedTrial] = []  # interrupted in an earlier run: handed out again first
        # WSD branching (`schedule.branch`): transfer's single-run cells start from a run of their size
        # near their law point; the law search's lattice runs from their exact twins (`Branches.plan_point`)
        self.branches = Branches(design, self.cells, self.config.noise) if branching_enabled(design) else None
        near = self.branches if self.transfer else None
        self.choice = CellChoice(design, self.config, self.book, self.learned, near, self._init_keys)
        self.start = CellStart(design, self.config, self.book, self.learned, near, self._init_keys)

    # ---- what it has learned (`law_state.SearchLaws`) ----------------------------------------
    @property
    def fit(self) -> Optional[LossLaw]:
        """The online L(N, D) fit (None before `min_fit_cells` cells resolved or when it failed)."""
        return self.learned.fit

    @property
    def hparams(self) -> HparamLaws:
        """The lr*/batch* laws."""
        return self.learned.hparams

    @property
    def checks(self) -> list[dict[str, Any]]:
        """Transfer: the law checks near the target and what they found."""
        return self.learned.checks

    # ---- the Planner interface ---------------------------------------------------------------
    @property
    def trials(self) -> list[PlannedTrial]:
        """Every trial planned so far (the grid's, then law points and law checks as the search goes)."""
        return self.book.trials

    @property
    def cells(self) -> list[SearchCell]:
        """The (N, D) cells and their search state."""
        return self.book.cells

    @property
    def committed(self) -> float:
        """FLOPs of the trials handed out."""
        return self.book.committed

    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out (Tune's num_samples)."""
        n = sum(len(c.trials) for c in self.cells)
        return min(n, self.config.max_trials) if self.config.max_trials else n

    def next_trial(self) -> Step:
        """The next trial to run, Wait until a running trial reports, or Done when the search is over."""
        if self._continued:  # committed by the earlier run: they run even if the replay stopped the search
            return self._continued.pop(0)
        if self.stopped:
            return Done(self.stopped)
        if self.config.max_trials is not None and len(self.book.handed) >= self.config.max_trials:
            return self._stop(f"max_trials ({self.config.max_trials}) handed out")
        wait = WAIT
        for _ in range(len(self.cells) + 2):
            for cell in self.book.open_cells():
                trial = self._from_cell(cell)
                if trial is not None:
                    return trial
            if self.stopped:
                return Done(self.stopped)
            if len(self.book.open_cells()) >= self.config.max_open_cells:
                break
            choice = self.choice.next()
            if choice is None or isinstance(choice, Wait):
                wait = choice or wait  # its reason, when the choice was to wait
                break
            self._open(*choice)
        if self.book.running():
            return wait
        if self.stopped:
            return Done(self.stopped)
        return self._stop(stopping.why_done(self.cells, self._affordable))

    def observe_report(self, trial_id: str, report: Mapping[str, Any]) -> None:
        """A running trial reported: the search acts on final results only."""

    def observe(self, trial_id: str, result: Optional[Mapping[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed)."""
        where = self.book.where.get(trial_id)
        if where is None:
            return
        cell, p = where
        if p not in cell.running:
            return  # not handed out by this planner (or observed twice)
        cell.running.discard(p)
        status, loss = outcome(result, cell.trials[p].D)  # Tune marks a stopped trial's result done
        if self.branches is not None:
            self.branches.ended(trial_id, status == "ok")
        if status == "ok":
            cell.loss[p] = loss
        else:
            cell.bad[p] = status
            if status == "diverged":
                cell.censor(p)
        self._settle(cell)

    def runnable(self) -> list[PlannedTrial]:
        """Trials handed out so far plus those the open cells would hand out next (for the display)."""
        out = list(self.book.handed)
        seen = {t.trial_id for t in out}
        for cell in self.book.open_cells():
            for p in self._ready(cell):
                t = cell.trials[p]
                if t.trial_id not in seen:
                    out.append(t)
                    seen.add(t.trial_id)
        return out

    def hparam_advice(self) -> Optional[HparamAdvice]:
        """The learned lr/batch laws (hedged lr) and their intervals, for the proposals; the rule also
        carries the search's loss correction of its WSD branches (`advice.SearchRule`)."""
        rule = SearchRule(self)
        return HparamAdvice(rule, rule.intervals, rule.corrected_loss)

    def advice_state(self) -> dict[str, Any]:
        """What `hparam_advice` reads (`law_state.SearchLaws.advice_state`: the lr*/batch* laws, the law checks)."""
        return self.learned.advice_state()

    def restore_advice_state(self, state: Mapping[str, Any]) -> None:
        """Take a cached search's `advice_state` (a fresh planner of the same spec then advises as it did)."""
        self.learned.restore_advice_state(state)

    def loss_as_fitted(self, trial_id: str, loss: float) -> float:
        """A finished run's loss as the search's L(N, D) fit counts it: a cell's WSD branch corrected to
        the cell's law point (`branches.corrected_loss`, as `book.fit_points`), any other run unchanged."""
        where = self.book.where.get(trial_id)
        if where is None or where[1] != LAW_POINT or not where[0].trials[LAW_POINT].branch_of:
            return loss
        return corrected_loss(where[0], loss)

    # ---- cell search -------------------------------------------------------------------------
    def _ready(self, cell: SearchCell) -> list[Point]:
        return cell.ready(self.config.scan_points, self.config.neighbourhood == "square")

    def _from_cell(self, cell: SearchCell) -> Optional[PlannedTrial]:
        """Hand out the cell's next ready point that fits the budget (None: nothing now)."""
        while True:
            ready = self._ready(cell)
            if not ready:
                self._settle(cell)
                return None
            p = ready[0]
            t, how = self._lattice_run(cell, p)
            if not self.book.affords(t.flops):
                cell.bad[p] = "budget"
                cell.queue = [q for q in cell.queue if q != p]
                continue
            if t.trial_id in self._resumed:  # ended in an earlier run of this sweep: not run again
                self._hand(cell, p, t)
                self.observe(t.trial_id, self._resumed.pop(t.trial_id))
                continue
            if p not in cell.why:
                b = cell.best()
                cell.why[p] = (f"neighbour of the cell's best point (lr={cell.trials[b].lr:.3g}, "
                               f"batch={cell.trials[b].batch}, loss={cell.loss[b]:.5g})" if b
                               else "no finite loss in the cell yet: nearest untried point to the start")
            if how:
                cell.why[p] += "; " + how
            self._hand(cell, p, t)
            self._log(cell, p, t)
            return t

    def _lattice_run(self, cell: SearchCell, p: Point) -> tuple[PlannedTrial, Optional[str]]:
        """Point p's trial as it would be handed out now, and how it starts: the law search under WSD
        branching plans each lattice run from a finished exact twin or from scratch with checkpoints
        (`Branches.plan_point`); otherwise the planned trial as it is (transfer's runs are planned
        when their cell opens)."""
        t = cell.trials[p]
        # LAW_POINT (transfer's only, off the lattice) keeps the trunk or branch planned when its cell opened (cell_start)
        if self.branches is None or self.transfer or p == LAW_POINT:
            return t, None
        return self.branches.plan_point(t)

    def _hand(self, cell: SearchCell, p: Point, t: Optional[PlannedTrial] = None) -> None:
        """Commit point p's trial (`t`: as `_lattice_run` planned it, else planned now)."""
        if t is None:
            t = self._lattice_run(cell, p)[0]
        if t is not cell.trials[p]:  # the law search's WSD run: it replaces the lattice's plan
            self.book.replace(cell, p, t)
            self.branches.hand(t)
        self.book.hand(cell, p)

    def _settle(self, cell: SearchCell) -> None:
        """Leave the queue phase when it has returned; resolve the cell when nothing is left to run."""
        if cell.state != "open":
            return
        if cell.queue and all(cell.tried(p) and p not in cell.running or not cell.available(p) for p in cell.queue):
            cell.queue = []
        if cell.queue or cell.running or self._ready(cell):
            return
        cell.state = "resolved" if cell.best() is not None else "abandoned"
        if cell.open_info.get("check"):
            rec = law_checks.check_record(cell, self.learned.noise(self._fit_points()))
            self.checks.append(rec)
            self.decisions.append({"action": "check", "trial_id": None, "committed_flops": self.committed, **rec})
        if cell.state == "resolved":
            self._refit()

    def _open(self, cell: SearchCell, info: dict[str, Any]) -> None:
        """Start searching `cell` (`cell_start.CellStart`: a coarse scan, or the law's point and neighbours)."""
        self._opened += 1
        cell.state, cell.order, cell.open_info = "open", self._opened, info
        self.start.begin(cell, info)

    # ---- choosing cells (`choice.CellChoice`) ------------------------------------------------
    def _affordable(self, cell: SearchCell) -> bool:
        return self.book.affords(cell.flops)

    # ---- laws ----------------------------------------------------------------------------------
    def _fit_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.book.fit_points()

    def _refit(self) -> None:
        """Refit the laws on the resolved cells (`law_state.SearchLaws.refit`); stop when its rule says so."""
        initial_open = self.transfer and any(c.state in ("closed", "open") for c in self.cells if c.key in self._init_keys)
        why = self.learned.refit(self.cells, self._fit_points(), initial_design_done=not initial_open)
        if why is not None:
            self._stop(why)

    # ---- bookkeeping -------------------------------------------------------------------------
    def _log(self, cell: SearchCell, p: Point, t: PlannedTrial) -> None:
        self.decisions.append(run_decision(cell, p, t, self.committed))

    def _stop(self, why: str) -> Done:
        if not self.stopped:
            self.stopped = why
            self._take_resumed_branches()  # after `stopped`: their refits cannot stop it again
            entry = {"action": "stop", "trial_id": None, "why": why, "committed_flops": self.committed,
                     "trials": len(self.book.handed), "estimate": self.estimate()}
            if self.transfer:
                bt = self.loss_backtest()
                entry.update(loss_backtest=bt, law_checks=list(self.checks), why=stopping.backtest_warning(why, bt))
            if self.branches is not None:
                entry["wsd_branching"] = self.branches.summary(self.book.handed)
            self.decisions.append(entry)
        return Done(self.stopped)
