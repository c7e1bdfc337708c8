"""The search's knobs as a small frozen dataclass, converted from the user's pydantic spec at one boundary.

The pure search never sees pydantic nor the spec's field names: `orchestrator.config.planning.search_config`
fills it from the validated, defaulted `search` section (docs/spec.md) and the online fit's form and
objective (`fit.law`, `fit.loss`). Built directly, the defaults are the `law` strategy's.

>>> SearchConfig(strategy="transfer", hedge=True).transfer
True
>>> SearchConfig().law
'auto'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SearchConfig:
    """What the law-guided search may do; every field is documented on `spec.SearchSpec`."""

    strategy: str = "law"  # law | transfer (grid: the GridPlanner, not this search)
    init_sizes: int = 2
    init_scans: int = 2
    scan_points: int = 5
    neighbourhood: str = "cross"  # cross | square
    max_open_cells: int = 4
    min_fit_cells: int = 6
    min_sizes: int = 3
    stop_streak: int = 2
    bootstrap: int = 100
    level: float = 0.9
    tolerance: float = 0.5
    loss_tolerance: float = 0.02
    regret_tolerance: Optional[float] = None
    prune_below: float = 0.1
    prune_band: float = 3.0
    noise: float = 0.003
    hparam_ridge: float = 0.05
    max_trials: Optional[int] = None
    batch_ladder: float = 2.0
    law_checks: int = 0
    check_budget: float = 0.01
    hedge: bool = False
    law: str = "auto"  # the online L(N, D) form (spec.fit.law): auto = chosen by backtest
    loss: str = "huber"  # its objective (spec.fit.loss)

    @property
    def transfer(self) -> bool:
        """Whether this is the transfer strategy."""
        return self.strategy == "transfer"
