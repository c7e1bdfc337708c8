"""The planner a spec asks for: one factory over the planning strategies, on the spec's design.

`grid` is `GridPlanner` below (`orchestrator.core.planning.grid.GridPlanner` on the spec's design);
`law` and `transfer` are the law-guided search (`LawGuidedPlanner` below:
`orchestrator.core.planning.search.planner.LawGuidedPlanner` on the spec's design, its `SearchConfig`
converted from `spec.search` and `spec.fit` at `orchestrator.config.planning`). Both
implement `orchestrator.core.planning.Planner`. The factory sits above both, so neither imports the
other's module to pick a strategy (no import cycle).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .planning import design_of, search_config
from ..core.planning import Planner
from ..core.planning.trial import PlannedTrial
from ..core.resources import ResourceError
from ..core.planning.grid import GridPlanner as _GridPlanner
from ..core.planning.search.config import SearchConfig
from ..core.planning.search.planner import LawGuidedPlanner as _LawGuidedPlanner
from .spec import SpecError, SweepSpec


class GridPlanner(_GridPlanner):
    """The grid planner of a spec (`core.planning.grid.GridPlanner` on its design); keeps the spec
    for the trainer's view of its trials (`trial_config`)."""

    def __init__(self, spec: SweepSpec):
        self.spec = spec
        try:
            super().__init__(design_of(spec))
        except ResourceError as exc:
            raise SpecError(str(exc)) from None



class LawGuidedPlanner(_LawGuidedPlanner):
    """The law-guided search of a spec: its design and (unless `config` is given) its `SearchConfig`."""

    def __init__(self, spec: SweepSpec, seed: int = 0, config: Optional[SearchConfig] = None,
                 candidates: Optional[Sequence[PlannedTrial]] = None):
        self.spec = spec
        try:
            super().__init__(design_of(spec), seed, config if config is not None else search_config(spec), candidates)
        except ResourceError as exc:
            raise SpecError(str(exc)) from None


def make_planner(spec: SweepSpec) -> Planner:
    """The planner the spec asks for: the grid, or the law-guided search (`law`, `transfer`)."""
    if spec.search.strategy in ("law", "transfer"):
        return LawGuidedPlanner(spec, seed=spec.seed)
    return GridPlanner(spec)
