"""The paired statistic: how much worse one run is than another, from their common prefix.

Pure numpy: the log-loss ratio of run i over run j over the recent common prefix, with a lower
end that holds the noise of the mean and of one report (`pair_stat`), and, for a completed pair,
how far that lower end overshot the realised final ratio from each fraction of the run on
(`overshoot`, the calibration data of `orchestrator.core.pruning.calibration`).

>>> import numpy as np
>>> s = np.arange(1.0, 101.0)
>>> upto, mean, low, _ = pair_stat(s, np.log(3.3 + 0 * s), s, np.log(3.0 + 0 * s), 0, 100, z(0.9))
>>> round(float(np.exp(mean)), 3), low <= mean
(1.1, True)
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
from scipy.stats import norm

PAIR_WINDOW = 0.25  # the paired statistic uses the common prefix from this fraction of it on
PAIR_MIN_POINTS = 4
PAIR_GRID = 101  # fractions 0, 0.01, ..., 1 at which the calibrated allowance is tabulated


@functools.lru_cache(maxsize=16)
def z(level: float) -> float:
    """The two-sided normal quantile of an interval at `level`.

    >>> round(z(0.9), 3)
    1.645
    """
    return float(norm.ppf(0.5 + level / 2))


def pair_stat(s_i: np.ndarray, l_i: np.ndarray, s_j: np.ndarray, l_j: np.ndarray, warmup_end: float,
              T: float, zq: float, trend: bool = True) -> Optional[tuple[float, float, float, float]]:
    """(common step, mean log ratio, its lower end, the lower end with a trend allowance) of run i over run j.

    Over i's reports in the last ``1 - PAIR_WINDOW`` of the common prefix (after warmup):
    d = log L_i - log L_j (j interpolated). Lower end = mean - z·sqrt(SE² + sd²): the noise of the
    mean (AR(1)-corrected) and of one report (the final loss is one report too). The trend variant
    also subtracts (max(-slope, 0) + z·SE_slope) × the log-steps still to go (slope of d in
    log-steps): a gap that closed lately may close as much again; a widening one is not
    extrapolated either way, only its slope's noise is allowed for.

    >>> s = np.arange(1.0, 101.0)
    >>> step, mean, low, _ = pair_stat(s, np.log(3.3 + 1 / s), s, np.log(3.0 + 1 / s), 0.0, 100.0, z(0.9))
    >>> step, round(mean, 3), low < mean
    (100.0, 0.095, True)
    """
    return _stat(s_i, l_i, s_j, l_j, warmup_end, T, zq, trend)


def _stat(s_i: np.ndarray, l_i: np.ndarray, s_j: np.ndarray, l_j: np.ndarray, warmup_end: float, T: float,
          zq: float, trend: bool, d_i: Optional[np.ndarray] = None) -> Optional[tuple[float, float, float, float]]:
    """`pair_stat`; given ``d_i`` = l_i - l_j(s_i) at every step of i (`overshoot_dir`: once per pair, not
    once per prefix), it slices that instead of interpolating. Means and spreads are written out
    (`_mean`, `_sd`): the same arithmetic as ``np.mean`` and ``np.std`` without their overhead."""
    upto = min(s_i[-1], s_j[-1])
    start = max(float(warmup_end), s_j[0])
    lo = max(PAIR_WINDOW * upto, start)
    keep = (s_i >= lo) & (s_i <= upto)
    if np.count_nonzero(keep) < PAIR_MIN_POINTS:
        return None
    every = (s_i >= start) & (s_i <= upto)
    if d_i is None:
        d = l_i[keep] - np.interp(s_i[keep], s_j, l_j)
        d_all = l_i[every] - np.interp(s_i[every], s_j, l_j)
    else:
        d, d_all = d_i[keep], d_i[every]
    mean = _mean(d)
    # One report's noise, from second differences of d over the whole common prefix after warmup
    # (var(d[k+1] - 2d[k] + d[k-1]) = 6·var(noise) for white noise; a smooth trend hardly adds):
    # steadier than the window's spread, and free of the trend, which the allowance covers.
    d1 = d_all[1:] - d_all[:-1]
    d2 = (d1[1:] - d1[:-1]) ** 2  # np.diff(d_all, 2) ** 2
    sd = math.sqrt(_mean(d2) / 6.0)
    naive = mean - zq * math.hypot(mean_se(d - mean), sd)
    if not trend:
        return float(upto), mean, naive, -math.inf
    x = np.log(s_i[keep])
    X = x - _mean(x)
    sxx = float(X @ X)
    if sxx <= 0:
        return float(upto), mean, naive, -math.inf
    slope = float(X @ (d - mean)) / sxx
    r = d - mean - slope * X
    sd_r = _sd(r) if r.size > 2 else 0.0
    se_r = mean_se(r)
    n_eff = (sd_r / se_r) ** 2 if se_r > 0 else float(r.size)
    se_slope = sd_r / math.sqrt(sxx) * math.sqrt(r.size / max(n_eff, 1.0))
    # Only a closing gap (slope < 0) may close as much again; a widening one is not extrapolated
    # (that would argue for the stop), only its slope's noise is allowed for.
    allowance = (max(-slope, 0.0) + zq * se_slope) * max(0.0, math.log(T) - _mean(x))
    return float(upto), mean, naive, naive - allowance


def overshoot(s_i: np.ndarray, l_i: np.ndarray, s_j: np.ndarray, l_j: np.ndarray, warmup_end: float,
              T: float, zq: float) -> np.ndarray:
    """For a completed pair: at each fraction f, the largest amount by which the paired lower end
    (either run over the other, at any report from f on) exceeded the realised final log ratio.

    Symmetric on purpose: a gap that shrinks counts as much as one that reverses. Counting only
    reversals (the wrong stops themselves) calibrates a bound that is right for 90 % of pairs,
    too weak when every winner meets several peers at dozens of reports: on the real lr sweeps it
    stopped 3 of 8 winners, on the simulated benchmark 1 of 6 cell winners.

    >>> s = np.arange(1.0, 101.0)
    >>> A = overshoot(s, np.log(3.3 + 1 / s), s, np.log(3.0 + 1 / s), 0.0, 100.0, z(0.9))
    >>> A.shape == (PAIR_GRID,), bool(np.isfinite(A).any())
    (True, True)
    """
    return np.maximum(overshoot_dir(s_i, l_i, s_j, l_j, warmup_end, T, zq),
                      overshoot_dir(s_j, l_j, s_i, l_i, warmup_end, T, zq))


def overshoot_dir(a_s: np.ndarray, a_l: np.ndarray, b_s: np.ndarray, b_l: np.ndarray, warmup_end: float,
                  T: float, zq: float) -> np.ndarray:
    """For a completed pair: at each fraction f, the largest amount by which run a's paired lower end
    over run b (at any report of a from f on) exceeded the realised final log ratio (-inf: no check).

    One direction only: across two schedule shapes the ratio drifts one way (the paired rule's
    cross-schedule comparison).

    >>> s = np.arange(1.0, 101.0)
    >>> A = overshoot_dir(s, np.log(3.3 + 1 / s), s, np.log(3.0 + 1 / s), 0.0, 100.0, z(0.9))
    >>> bool(np.isfinite(A).any()), bool(np.all(A[np.isfinite(A)] <= 0.0))
    (True, True)
    """
    out = np.full(PAIR_GRID, -np.inf)
    final = float(a_l[-1] - b_l[-1])
    f, score = [], []
    # b's steps strictly increasing (always, in a history): interpolation is pointwise, so it is done
    # once for all of a's steps; the prefixes slice it (each prefix is pair_stat of a's first k reports)
    d_a = a_l - np.interp(a_s, b_s, b_l) if bool(np.all(b_s[1:] > b_s[:-1])) else None
    for k in range(PAIR_MIN_POINTS, a_s.size + 1):
        stat = _stat(a_s[:k], a_l[:k], b_s, b_l, warmup_end, T, zq, False, None if d_a is None else d_a[:k])
        if stat is not None:
            f.append(stat[0] / T)
            score.append(stat[2] - final)
    return from_each_fraction(f, score) if f else out


def from_each_fraction(f, score, largest: bool = True) -> np.ndarray:
    """At each fraction of ``PAIR_GRID``, the largest (or smallest) score of the checks made at
    that fraction of the run or later (``f`` ascending); -inf (+inf) where no check is that late.

    >>> A = from_each_fraction([0.2, 0.5, 0.9], [3.0, 1.0, 2.0])
    >>> float(A[0]), float(A[30]), float(A[60]), float(A[-1])
    (3.0, 2.0, 2.0, -inf)
    >>> float(from_each_fraction([0.2, 0.5], [3.0, 1.0], largest=False)[0])
    1.0
    """
    score = np.asarray(score, float)
    if not largest:
        return -from_each_fraction(f, -score)
    out = np.full(PAIR_GRID, -np.inf)
    sup = np.maximum.accumulate(score[::-1])[::-1]  # worst from each check on
    idx = np.searchsorted(np.asarray(f, float), np.linspace(0.0, 1.0, PAIR_GRID))
    ok = idx < score.size
    out[ok] = sup[idx[ok]]
    return out


def at(A: np.ndarray, f: float) -> float:
    """The allowance A at fraction f of the run (never negative: an allowance never helps a stop).

    >>> at(np.linspace(-1.0, 1.0, 101), 1.0), at(np.linspace(-1.0, 1.0, 101), 0.0)
    (1.0, 0.0)
    """
    return max(0.0, float(A[min(int(f * (A.size - 1)), A.size - 1)]))


def mean_se(r: np.ndarray) -> float:
    """Standard error of the mean of an autocorrelated series (AR(1) effective sample size).

    >>> round(mean_se(np.array([1.0, -1.0] * 50)), 3)
    0.101
    """
    n = len(r)
    sd = _sd(r) if n > 1 else 0.0
    if n < 3 or sd == 0:
        return sd
    a, b = r[:-1] - _mean(r[:-1]), r[1:] - _mean(r[1:])  # lag-1 correlation (np.corrcoef, cheaper)
    den = math.sqrt(float(a @ a) * float(b @ b))
    rho = float(a @ b) / den if den > 0 else 0.0  # a constant half: no correlation to speak of
    rho = min(max(rho, 0.0), 0.95)
    return sd / math.sqrt(max(n * (1 - rho) / (1 + rho), 1.0))


def _sd(x: np.ndarray) -> float:
    """``np.std(x, ddof=1)``, the same arithmetic (mean, squared deviations, their sum / (n - 1)), cheaper.

    >>> x = np.array([1.0, 2.5, 4.0, 8.0])
    >>> _sd(x) == float(np.std(x, ddof=1))
    True
    """
    dev = x - _mean(x)
    return math.sqrt(float(_sum(dev * dev)) / (x.size - 1))


_sum = np.add.reduce  # what ndarray.sum calls (the same pairwise summation), without its wrappers


def _mean(x: np.ndarray) -> float:
    """``np.mean(x)`` of a 1-d float array, the same arithmetic (its sum / n), cheaper.

    >>> x = np.array([0.1, 0.7, 1e-9, 3.0])
    >>> _mean(x) == float(np.mean(x))
    True
    """
    return float(_sum(x)) / x.size


__all__ = ["pair_stat", "overshoot", "overshoot_dir", "at", "mean_se", "z", "PAIR_MIN_POINTS", "PAIR_GRID",
           "PAIR_WINDOW"]
