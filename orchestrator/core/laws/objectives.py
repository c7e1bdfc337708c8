"""Robust per-point losses on log-residuals, with their derivatives, for the law fitters.

Every loss takes residuals ``r = log(pred) - log(obs)`` and returns ``(values, derivs)``,
both elementwise arrays (float64) with ``derivs = d values / d r``. Fitters *sum* the values
(the mean makes L-BFGS stop early: its gradient tolerance is absolute).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

LossFn = Callable[..., tuple[np.ndarray, np.ndarray]]

DEFAULT_DELTA = 1e-3
DEFAULT_OVER_WEIGHT = 4.0


def huber(r: np.ndarray, delta: float = DEFAULT_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss (quadratic within ``delta``, linear beyond) and its derivative, elementwise.

    >>> values, derivs = huber(np.array([0.0005, -0.01]), delta=1e-3)
    >>> values.round(10).tolist(), derivs.tolist()  # quadratic inside delta, linear beyond
    ([1.25e-07, 9.5e-06], [0.0005, -0.001])
    """
    r = np.asarray(r, dtype=np.float64)
    a = np.abs(r)
    inside = a <= delta
    values = np.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    derivs = np.where(inside, r, delta * np.sign(r))
    return values, derivs


def asymmetric(
    r: np.ndarray, delta: float = DEFAULT_DELTA, over_weight: float = DEFAULT_OVER_WEIGHT
) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss with over-predictions (r > 0) weighted ``over_weight`` times: a frontier fit.

    >>> values, _ = asymmetric(np.array([0.01, -0.01]), over_weight=4.0)
    >>> (values / values[1]).tolist()  # an over-prediction costs four times an under-prediction
    [4.0, 1.0]
    """
    # Over-predicting a run's loss means claiming a config is worse than it was; the frontier
    # (lowest achievable loss) should sit at or below the observations, so those errors cost more.
    values, derivs = huber(r, delta)
    w = np.where(np.asarray(r) > 0, float(over_weight), 1.0)
    return w * values, w * derivs


LOSSES: dict[str, LossFn] = {"huber": huber, "asymmetric": asymmetric}


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` (``huber`` or ``asymmetric``); ValueError naming the choices otherwise.

    >>> get_loss("huber") is huber
    True
    >>> get_loss("l2")
    Traceback (most recent call last):
    ...
    ValueError: unknown loss 'l2'; choose one of huber, asymmetric
    """
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None
