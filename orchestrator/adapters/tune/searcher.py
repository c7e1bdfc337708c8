"""A Ray Tune `Searcher` that asks the planner which trial to run next.

Thin by design: every decision lives in the pure planner; this adapter only maps Tune's
trial ids to the planner's trials. Usable in any user's own `Tuner`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.search import Searcher

from ...core.planning import Done, Planner, Wait
from ...core.planning.trial import PlannedTrial


class PlannerSearcher(Searcher):
    """Suggests the planner's next trial; FINISHED when the planner is done.

    Any `orchestrator.core.planning.Planner` plugs in (the grid, or the law-guided search).
    """

    def __init__(self, planner: Planner, to_config: Callable[[PlannedTrial], dict[str, Any]],
                 metric: str = "eval_loss", mode: str = "min", paused: Optional[Callable[[], bool]] = None):
        super().__init__(metric=metric, mode=mode)
        self.planner = planner
        self.to_config = to_config
        self.paused = paused  # True: start no new trial (the sweep is stopping)
        self.assigned: dict[str, PlannedTrial] = {}  # Tune trial id -> planned trial

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.paused is not None and self.paused():
            return None  # Tune asks again later; the stopper ends the sweep meanwhile
        step = self.planner.next_trial()
        if isinstance(step, Done):
            return Searcher.FINISHED
        if isinstance(step, Wait):
            return None  # Tune asks again later
        self.assigned[trial_id] = step
        return self.to_config(step)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self.assigned.get(trial_id)
        if trial is not None:
            self.planner.observe_report(trial.trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        trial = self.assigned.pop(trial_id, None)
        if trial is not None:
            self.planner.observe(trial.trial_id, None if error else result)
