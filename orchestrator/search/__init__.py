"""Law-guided search: which trial to run next, chosen for what it teaches about the target-budget optimum.

One concept per module: `config` (the knobs, from the spec at one boundary), `lattice` (a cell's
(lr, batch) lattice and its search state), `hparam_state` (lr*, batch* laws, intervals, hedge),
`loss_law` (L(N, D) with its form chosen by backtest, and its replicates), `acquisition` (which
cell next), `checks` (transfer's law checks near the target), `stopping` (when to stop) and
`planner` (`LawGuidedPlanner`, the `orchestrator.core.planning.Planner` that ties them).
"""
from ..core.planning import WAIT, Done, Wait
from .config import SearchConfig
from .hparam_state import hedge_shift
from .lattice import LAW_POINT, batch_ladder, outcome
from .planner import LawGuidedPlanner

__all__ = ["Done", "LAW_POINT", "LawGuidedPlanner", "SearchConfig", "WAIT", "Wait", "batch_ladder", "hedge_shift",
           "outcome"]
