"""Bootstrap resampling of runs (rows or whole model sizes) and intervals from the replicates."""
from __future__ import annotations

import math

import numpy as np

from .result import Interval

INTERVAL_METHODS = ("percentile", "basic")


def resample_weights(n: int, k: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """k bootstrap resamples of n rows as per-row counts, shape (k, n).

    With ``groups`` (one label per row) whole groups are drawn with replacement (a cluster
    bootstrap), so rows that share a model size stay together.

    >>> W = resample_weights(4, 3, np.random.default_rng(0))
    >>> W.shape, W.sum(axis=1).tolist()  # every resample draws 4 rows
    ((3, 4), [4.0, 4.0, 4.0])
    >>> W = resample_weights(4, 50, np.random.default_rng(0), groups=np.array([0, 0, 1, 1]))
    >>> bool(np.all(W[:, 0] == W[:, 1]))  # rows of a group are drawn together
    True
    """
    if groups is None:
        idx = rng.integers(0, n, size=(k, n))
        return np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
    labels, inverse = np.unique(np.asarray(groups), return_inverse=True)
    g = len(labels)
    draws = rng.integers(0, g, size=(k, g))
    counts = np.stack([np.bincount(row, minlength=g) for row in draws]).astype(np.float64)
    return counts[:, inverse]


def size_groups(N: np.ndarray, rel_tol: float = 1e-3) -> np.ndarray:
    """Labels grouping rows whose N agree within ``rel_tol`` (digitised sizes jitter slightly).

    >>> size_groups(np.array([1e8, 3e8, 1.0001e8, 3e8])).tolist()
    [0, 1, 0, 1]
    """
    logN = np.log(np.asarray(N, dtype=np.float64))
    order = np.argsort(logN, kind="stable")
    labels = np.empty(len(logN), dtype=np.int64)
    current, start = 0, None
    for i in order:
        if start is not None and logN[i] - start > rel_tol:
            current += 1
            start = logN[i]
        if start is None:
            start = logN[i]
        labels[i] = current
    return labels


def interval(estimate: float, samples: np.ndarray, level: float = 0.9, method: str = "percentile",
             log: bool = False) -> Interval:
    """Central bootstrap interval at ``level`` for one quantity from its replicates.

    ``percentile`` takes the replicate quantiles; ``basic`` reflects them about the estimate
    (2*est - q), which corrects the percentile interval's bias when the estimator is skewed.
    ``log`` applies the method to log(quantity) (for positive quantities like A, N*).

    >>> iv = interval(1.0, np.random.default_rng(0).normal(1.0, 0.1, 2000), level=0.9)
    >>> round(iv.low, 2), round(iv.high, 2)
    (0.84, 1.16)
    >>> iv.covers(1.0)
    True
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {', '.join(INTERVAL_METHODS)}")
    s = np.asarray(samples, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2 or not math.isfinite(estimate):
        return Interval(float(estimate), math.nan, math.nan, level)
    use_log = log and estimate > 0 and np.all(s > 0)
    est = math.log(estimate) if use_log else float(estimate)
    s = np.log(s) if use_log else s
    q_lo, q_hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    if method == "basic":
        q_lo, q_hi = 2 * est - q_hi, 2 * est - q_lo
    if use_log:
        q_lo, q_hi = math.exp(q_lo), math.exp(q_hi)
    return Interval(float(estimate), float(q_lo), float(q_hi), level)
