"""A Ray Tune `Searcher` that asks the planner which trial to run next.

Thin by design: every decision lives in the pure planner; this adapter only maps Tune's
trial ids to the planner's trials. Usable in any user's own `Tuner`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from ray.tune.search import Searcher

from ..planner import WAIT, GridPlanner, PlannedTrial


class PlannerSearcher(Searcher):
    """Suggests the planner's next trial; FINISHED when the planner is done.

    Any planner with `next_trial() -> PlannedTrial | WAIT | None` and
    `observe(trial_id, result)` plugs in (the grid, or the law-guided search).
    """

    def __init__(self, planner: GridPlanner, to_config: Callable[[PlannedTrial], dict[str, Any]],
                 metric: str = "eval_loss", mode: str = "min", paused: Optional[Callable[[], bool]] = None):
        super().__init__(metric=metric, mode=mode)
        self.planner = planner
        self.to_config = to_config
        self.paused = paused  # True: start no new trial (the sweep is stopping)
        self.assigned: dict[str, PlannedTrial] = {}  # Tune trial id -> planned trial

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.paused is not None and self.paused():
            return None  # Tune asks again later; the stopper ends the sweep meanwhile
        trial = self.planner.next_trial()
        if trial is None:
            return Searcher.FINISHED
        if trial == WAIT:
            return None  # Tune asks again later
        self.assigned[trial_id] = trial
        return self.to_config(trial)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self.assigned.get(trial_id)
        observe = getattr(self.planner, "observe_report", None)
        if trial is not None and observe is not None:
            observe(trial.trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        trial = self.assigned.pop(trial_id, None)
        if trial is not None:
            self.planner.observe(trial.trial_id, None if error else result)
