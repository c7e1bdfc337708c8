"""The frontier reference: the best loss achievable at a trial's compute, by the L(N, D) Chinchilla
law fitted on the sweep's finished trials (best final loss per (N, D) cell), upper end from its
bootstrap. Used by the law rule once ``min_frontier_points`` cells over ≥ 3 sizes have finished.

Refitted once the finished trials grew by ``refit_growth`` since the last fit (the bootstrap fit
takes ~0.1 s; a sweep of thousands would refit it on every completion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..laws.chinchilla import fit_chinchilla, frontier_samples, refit
from .config import PruneConfig
from .history import History
from .meta import TrialMeta

Frontier = Callable[[TrialMeta], tuple[float, float]]  # meta -> (estimate, upper end) at its compute


@dataclass(frozen=True)
class FrontierConfig:
    """When and how the frontier is fitted."""

    min_points: int = 8  # finished (N, D) cells needed (over >= 3 sizes)
    bootstrap: int = 64  # replicates of the fit (its upper end)
    level: float = 0.9
    refit_growth: float = 0.1
    seed: int = 0

    @classmethod
    def of(cls, config: PruneConfig) -> "FrontierConfig":
        return cls(min_points=config.min_frontier_points, bootstrap=config.frontier_bootstrap, level=config.level,
                   refit_growth=config.refit_growth, seed=config.seed)


class FittedFrontier:
    """The sweep's own frontier, refitted lazily from the history's finals."""

    def __init__(self, config: FrontierConfig = FrontierConfig()):
        self.config = config
        self._fit = None
        self._seen = 0  # History.n_completions when last looked at
        self._n = 0  # finished trials the current fit has seen

    def at(self, meta: TrialMeta, history: History) -> Optional[tuple[float, float]]:
        """(estimate, upper end) of the best loss achievable at the trial's compute, or None."""
        fit = self._fitted(history)
        if fit is None:
            return None
        C = meta.compute
        est = float(fit.law.frontier([C])["loss_opt"][0])
        if fit.samples is None or len(fit.samples) < 2:
            return est, est
        reps = frontier_samples(fit.samples, [C])["loss_opt"][:, 0]
        reps = reps[np.isfinite(reps)]
        high = float(np.quantile(reps, 0.5 + self.config.level / 2)) if reps.size else est
        return est, max(est, high)

    def _fitted(self, history: History):
        cfg = self.config
        grown = len(history.finals) >= self._n * (1.0 + cfg.refit_growth)
        if history.n_completions != self._seen and (self._fit is None or grown):
            self._seen = history.n_completions
            best: dict[tuple[float, float], float] = {}
            for cell, final in history.finals.values():
                best[cell] = min(final, best.get(cell, math.inf))
            Ns = {c[0] for c in best}
            if len(best) >= cfg.min_points and len(Ns) >= 3:
                cells = sorted(best)
                N = np.array([c[0] for c in cells])
                D = np.array([c[1] for c in cells])
                L = np.array([best[c] for c in cells])
                kw = dict(bootstrap=cfg.bootstrap, seed=cfg.seed)
                self._n = len(history.finals)
                try:
                    self._fit = (refit(self._fit, N, D, L, **kw) if self._fit is not None
                                 else fit_chinchilla(N, D, L, **kw))
                except (RuntimeError, ValueError):
                    self._fit = None
        return self._fit


__all__ = ["FittedFrontier", "FrontierConfig", "Frontier"]
