"""The LR-annealing law of a loss curve (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing").

    L(s) = L0 + A·S1^(−alpha) − C·S2
    S1 = Σ_{i=1..s} η_i                       (forward area)
    S2 = Σ_{i=1..s} m_i,  m_i = λ·m_{i−1} + (η_{i−1} − η_i)   (momentum-smoothed annealing area)

λ (``decay``) is a fixed hyperparameter, 0.999 per step as in the paper. Warmup: the paper's
reference code counts warmup steps in S1 *at the peak lr* (``warmup="peak"``); the default
here counts the real warmup area (``"actual"``), which predicts the published multi-power-law
curves better (docs/curves.md has both). The lr rise of warmup never enters S2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from .curve_law import CurveLaw
from .curves import Schedule

PARAMS = ("L0", "A", "alpha", "C")


@dataclass
class AnnealingDesign:
    """S1 and S2 of one schedule at some steps."""

    s1: np.ndarray
    s2: np.ndarray


def annealing_area(schedule: Schedule, decay: float = 0.999) -> np.ndarray:
    """S2 at every step: the cumulative momentum of post-warmup lr drops.

    >>> from orchestrator.core.laws.curves import per_step_schedule
    >>> s = per_step_schedule([0, 10, 20, 30], [1.0, 1.0, 0.5, 0.0])  # stable, then a linear decay
    >>> round(float(annealing_area(s, decay=0.0)[-1]), 6)  # no momentum: the total lr drop
    1.0
    >>> round(float(annealing_area(s)[-1]), 3)  # momentum keeps each drop counting afterwards
    10.434
    """
    m = lfilter([1.0], [1.0, -float(decay)], schedule.drops())
    return np.cumsum(m)


class AnnealingLaw(CurveLaw):
    """L(s) = L0 + A·S1^−alpha − C·S2, fitted jointly to curves of one model size."""

    name = "annealing"
    param_names = PARAMS

    def __init__(self, warmup: str = "actual", decay: float = 0.999, seed: int = 0, n_boot: int = 30, **kw):
        super().__init__(warmup=warmup, seed=seed, n_boot=n_boot, **kw)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)

    def design(self, schedule: Schedule, steps: np.ndarray) -> AnnealingDesign:
        """Forward lr area ``s1`` and annealing area ``s2`` at ``steps`` (see ``CurveLaw.design``)."""
        idx = np.rint(np.asarray(steps, dtype=np.float64)).astype(np.int64)
        s1 = schedule.forward_area(idx, self.warmup)
        if np.any(s1 <= 0):
            raise ValueError("annealing: zero lr area at a predicted step (before any update)")
        return AnnealingDesign(s1=s1, s2=annealing_area(schedule, self.decay)[idx])

    def _model(self, theta, design: AnnealingDesign, jac: bool):
        L0, A, alpha, C = theta
        logs1 = np.log(design.s1)
        zpow = np.exp(-alpha * logs1)
        pred = L0 + A * zpow - C * design.s2
        if not jac:
            return pred, None
        J = np.column_stack([np.ones_like(pred), zpow, -A * zpow * logs1, -design.s2])
        return pred, J

    def _bounds(self, min_loss: float):
        return np.array([0.0, 0.0, 1e-3, 0.0]), np.array([min_loss, np.inf, 3.0, np.inf])

    def _starts(self, designs, obs):
        """Variable projection over alpha: L0, A, C are linear given alpha; the best two start the fit."""
        y = np.concatenate(obs)
        s1 = np.concatenate([d.s1 for d in designs])
        s2 = np.concatenate([d.s2 for d in designs])
        scored = []
        for alpha in np.linspace(0.05, 1.5, 30):
            X = np.column_stack([np.ones_like(s1), s1 ** (-alpha), -s2])
            coef, *_ = np.linalg.lstsq(X, y, rcond=None)
            L0, A, C = coef
            if not (0 < L0 < y.min() and A > 0):
                continue
            coef = np.array([L0, A, max(C, 0.0)])
            scored.append((float(np.sum((X @ coef - y) ** 2)), np.array([L0, A, alpha, coef[2]])))
        scored.sort(key=lambda s: s[0])
        return [s for _, s in scored[:2]] or [np.array([0.9 * y.min(), 1.0, 0.5, 1.0])]
