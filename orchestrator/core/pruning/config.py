"""The pruner's knobs as one frozen dataclass, and the one boundary from the user's spec to it.

The fields, names and defaults are the spec's ``pruning`` section (``orchestrator.config.spec.PruningSpec``,
typed, validated and documented in docs/spec.md); the pure rules never see the pydantic model: the
boundary ``orchestrator.config.pruning.prune_config`` fills this config from it.

>>> PruneConfig(level=0.8).level, PruneConfig().metric
(0.8, 'eval_loss')
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruneConfig:
    """Every knob of the pruning rules (docs/spec.md, ``pruning``)."""

    margin: float = 0.02  # law rule: stop when the prediction's low end > the reference's high end x (1 + margin)
    grace: float = 0.3  # law rule: no final-loss prediction before this fraction of the planned steps
    paired_grace: float = 0.1  # paired rule: no comparison before this fraction of the planned steps
    paired_margin: float = 0.0  # paired rule: stop when the ratio's lower end > 1 + paired_margin
    paired_prior: float = 0.03  # paired rule: extra allowance (log ratio) until the sweep's pairs calibrate it
    min_reports: int = 2  # consecutive votes needed to stop (every rule)
    level: float = 0.9  # level of every interval
    law: str = "multipower"  # loss-curve law of the final-loss prediction (multipower | annealing)
    metric: str = "eval_loss"  # the loss that is judged
    divergence_factor: float = 1.5  # loss above this x the running minimum counts as exploding
    refit_growth: float = 0.1  # a new prediction / refit once what it rests on grew by this fraction
    refit_every: int = 2  # ... and at least this many reports arrived since the last prediction
    use_frontier: bool = True  # compare with the fitted L(N, D) frontier once it exists
    min_frontier_points: int = 8  # finished (N, D) cells needed before the frontier is fitted
    frontier_bootstrap: int = 64  # bootstrap replicates of the frontier fit
    max_curves: int = 6  # completed curves per (size, schedule family) the curve law is fitted on (most recent)
    n_boot: int = 10  # bootstrap refits of the curve law
    seed: int = 0  # seed of the bootstraps


__all__ = ["PruneConfig"]
