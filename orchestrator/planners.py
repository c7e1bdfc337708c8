"""The planner a spec asks for: one factory over the planning strategies.

`grid` is `orchestrator.planner.GridPlanner`; `law` and `transfer` are the law-guided search
(`orchestrator.search.planner.LawGuidedPlanner`). Both implement `orchestrator.core.planning.Planner`.
The factory sits above both, so neither imports the other's module to pick a strategy (no import cycle).
"""
from __future__ import annotations

from .core.planning import Planner
from .planner import GridPlanner
from .search.planner import LawGuidedPlanner
from .spec import SweepSpec


def make_planner(spec: SweepSpec) -> Planner:
    """The planner the spec asks for: the grid, or the law-guided search (`law`, `transfer`) with its
    `SearchConfig` converted from `spec.search` and `spec.fit`."""
    if spec.search.strategy in ("law", "transfer"):
        return LawGuidedPlanner(spec, seed=spec.seed)
    return GridPlanner(spec)
