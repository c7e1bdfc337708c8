"""The pruning rules, one per file, and the registry the pruner builds its rules from.

Each entry maps a name to a factory ``(config, frontier) -> Rule``; the pruner checks the rules in
this order on every report, and the first stop wins. Adding a rule is one file in this folder and
one line here (docs/architecture-pruning.md has a worked example).
"""
from __future__ import annotations

from typing import Callable, Optional

from ..config import PruneConfig
from ..frontier import FittedFrontier, Frontier, FrontierConfig
from ..rule import Patient, Rule
from .divergence import Divergence, DivergenceConfig
from .forecast import Forecast, ForecastConfig
from .law import LawConfig, LawRule
from .paired import Paired, PairedConfig

RuleFactory = Callable[[PruneConfig, Optional[Frontier]], Rule]

RULES: dict[str, RuleFactory] = {
    "divergence": lambda cfg, frontier: Patient(Divergence(DivergenceConfig.of(cfg)), cfg.min_reports, key=None),
    "paired": lambda cfg, frontier: Patient(Paired(PairedConfig.of(cfg)), cfg.min_reports),
    "law": lambda cfg, frontier: Patient(LawRule(LawConfig.of(cfg), frontier, FittedFrontier(FrontierConfig.of(cfg))),
                                         cfg.min_reports),
    "forecast": lambda cfg, frontier: Patient(Forecast(ForecastConfig.of(cfg)), cfg.min_reports),
}

__all__ = ["RULES", "RuleFactory", "Divergence", "DivergenceConfig", "Paired", "PairedConfig", "LawRule", "LawConfig",
           "Forecast", "ForecastConfig"]
