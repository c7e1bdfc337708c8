"""Planning: which trials a sweep runs, in which order (pure: standard library, numpy, scipy).

- `protocol`: the `Planner` protocol and its explicit step results `Wait` / `Done`;
- `trial`: `PlannedTrial`, one planned run with everything the controller and the fit need;
- `design`: the sweep's design as small frozen configs (`Design`, `ResourceConfig`), converted from
  the user's spec at one boundary (`orchestrator.config.planning.design_of`), and the planning of
  one trial and of the grid on it;
- `branching`: WSD trunks and cooldown branches of the grid;
- `grid`: `GridPlanner`, the grid's trials cheapest first within the budget;
- `search/`: the law-guided search (`LawGuidedPlanner`), on the same `Design` and a frozen `SearchConfig`.
"""
from .protocol import WAIT, Done, HparamAdvice, Planner, Step, Wait

__all__ = ["Done", "HparamAdvice", "Planner", "Step", "WAIT", "Wait"]
