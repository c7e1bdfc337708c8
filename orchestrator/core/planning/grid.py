"""The grid planner: the design's grid, cheapest trials first, within the compute budget.

>>> g = GridPlanner(Design("gpt", 64, (20000,), ((640000,),), (1e-3, 3e-3), (1024,), (0,), total_flops=1.2e11))
>>> t = g.next_trial(); t.lr, g.next_trial()
(0.001, Done(why='every grid trial handed out or skipped (budget)'))
"""
from __future__ import annotations

import copy
import heapq
from typing import Any, Mapping, Optional

from ..outcome import Outcome, outcome_of
from .design import Design, plan_grid
from .protocol import WAIT, Done, HparamAdvice, Step
from .trial import PlannedTrial


class GridPlanner:
    """Hands out the grid's trials in order until the grid or the compute budget is spent.

    Compute is committed when a trial is handed out (its planned FLOPs), so concurrent
    trials can never overrun the budget. Implements `orchestrator.core.planning.Planner`.
    """

    def __init__(self, design: Design):
        self.design = design
        self.trials = plan_grid(design)
        self.budget = design.total_flops
        self.decisions: list[dict[str, Any]] = []
        self._start()

    def _start(self) -> None:
        """A fresh hand-out state over the planned trials."""
        self.committed = 0.0
        self.skipped: list[PlannedTrial] = []
        self.reached: dict[str, int] = {}  # trial id -> the last step it reported with a finite loss
        self.diverged: dict[str, int] = {}  # trial id -> the step of its non-finite report
        self.ended: set[str] = set()
        # Trials that may start now, as a heap of (plan position, trial): cheapest first. A WSD
        # branch joins it only once its trunk has reported its branch point (`_waiting` till then).
        self._queue: list[tuple[int, PlannedTrial]] = []
        self._waiting: dict[str, list[tuple[int, PlannedTrial]]] = {}  # trunk id -> its branches
        for entry in enumerate(self.trials):
            if entry[1].branch_of is None:
                self._queue.append(entry)  # in plan order: already a heap
            else:
                self._waiting.setdefault(entry[1].branch_of, []).append(entry)

    @property
    def trial_cap(self) -> int:
        """Most trials this planner can hand out."""
        return len(self.runnable())

    def next_trial(self) -> Step:
        """The next trial to run; WAIT while only branches whose trunk is still short of their
        branch point are left; Done when the grid or the budget is exhausted."""
        while self._queue:
            _, trial = heapq.heappop(self._queue)
            if self.budget is not None and self.committed + trial.flops > self.budget:
                self.skipped.append(trial)
                self._end(trial.trial_id)  # never runs: its branches go with it
                continue
            self.committed += trial.flops
            why = (f"cooldown branch of {trial.branch_of} from step {trial.branch_step}" if trial.branch_of
                   else "next grid point (cheapest first)")
            self.decisions.append({"trial_id": trial.trial_id, "action": "run", "why": why})
            return trial
        return WAIT if self._waiting else Done("every grid trial handed out or skipped (budget)")

    def observe_report(self, trial_id: str, report: dict[str, Any]) -> None:
        """A running trial reported: a WSD trunk's progress releases the branches it has passed. A
        report with non-finite losses (`core.outcome`: diverged) passes no branch point: a trainer
        saves no checkpoint of a diverged state, so the branches still waiting are skipped when it ends."""
        if "step" not in report:
            return
        if ("train_loss" in report or "eval_loss" in report) and outcome_of(report) is Outcome.DIVERGED:
            self.diverged.setdefault(trial_id, int(report["step"]))
            return
        step = self.reached[trial_id] = max(self.reached.get(trial_id, -1), int(report["step"]))
        branches = self._waiting.get(trial_id)
        if branches:
            for entry in branches:
                if entry[1].branch_step <= step:
                    heapq.heappush(self._queue, entry)
            rest = [e for e in branches if e[1].branch_step > step]
            if rest:
                self._waiting[trial_id] = rest
            else:
                del self._waiting[trial_id]

    def observe(self, trial_id: str, result: Optional[dict[str, Any]]) -> None:
        """A trial ended with its last report (None if it failed)."""
        if result:
            self.observe_report(trial_id, result)
        self._end(trial_id)

    def _end(self, trial_id: str) -> None:
        """The trial will report no more: branches still waiting for it are skipped."""
        self.ended.add(trial_id)
        div = self.diverged.get(trial_id)
        ended = f"diverged at step {div}" if div is not None else f"ended at step {self.reached.get(trial_id, 0)}"
        for _, branch in self._waiting.pop(trial_id, []):
            self.skipped.append(branch)
            self.decisions.append({"trial_id": branch.trial_id, "action": "skip",
                                   "why": f"its WSD trunk {trial_id} {ended}, before step {branch.branch_step}"})

    def resume(self, results: dict[str, Optional[dict[str, Any]]],
               interrupted: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        """Trials that ended in an earlier run of this sweep: not run again, their compute counted (the
        `interrupted` ones run again as the fixed grid planned them: nothing to do)."""
        done = set(results)
        self.committed += sum(t.flops for t in self.trials if t.trial_id in done)
        self._queue = [e for e in self._queue if e[1].trial_id not in done]
        heapq.heapify(self._queue)
        for trunk in list(self._waiting):
            self._waiting[trunk] = [e for e in self._waiting[trunk] if e[1].trial_id not in done]
            if not self._waiting[trunk]:
                del self._waiting[trunk]
        for tid, result in results.items():
            self.observe(tid, result)

    def hparam_advice(self) -> Optional[HparamAdvice]:
        """None: the grid learns no hyperparameter laws (the proposals fit their own)."""
        return None

    def advice_state(self) -> None:
        """None: no advice, no state behind it."""
        return None

    def restore_advice_state(self, state: Mapping[str, Any]) -> None:
        """A grid has no advice state to take (ValueError: the state is another planner's)."""
        raise ValueError("a grid planner gives no hyperparameter advice: no advice state to restore")

    def runnable(self) -> list[PlannedTrial]:
        """What a fresh sweep will run within the budget, in hand-out order (cheapest first; a WSD
        branch after its trunk, every trial assumed to run to its end)."""
        sim = copy.copy(self)
        sim.decisions = []
        sim._start()
        out = []
        while isinstance(t := sim.next_trial(), PlannedTrial):
            out.append(t)
            sim.observe(t.trial_id, {"step": t.D // t.batch})
        return out
