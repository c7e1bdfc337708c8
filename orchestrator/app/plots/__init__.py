"""Sweep figures (matplotlib, rendered with Agg), one per file. Every plot function is a pure function of
rows, arrays or fit results that returns a `Figure` and never shows it; `evidence.sweep_figures` builds
them all from a sweep's store and fit (the parent run's `plots/` artifacts and the report's figures).
"""
from .accuracy import accuracy_vs_compute
from .backtest import predicted_vs_observed
from .bowls import hparam_bowls
from .branches import wsd_branches
from .isoflop import group_by_compute, isoflop_curves, power_law
from .loss_vs_compute import loss_vs_compute
from .pruning import pruner_decisions

__all__ = ["accuracy_vs_compute", "group_by_compute", "hparam_bowls", "isoflop_curves", "loss_vs_compute",
           "power_law", "predicted_vs_observed", "pruner_decisions", "wsd_branches"]
