"""Kaplan et al. (2020) law L(N, D) = [(Nc/N)^(alphaN/alphaD) + Dc/D]^alphaD: fit, predict, frontier.

The fit minimises the summed robust loss of log-residuals (objectives.LOSSES). Seeds come from
variable projection: for fixed exponents, L^(1/alphaD) = Nc^k * N^-k + Dc * D^-1 (k = alphaN/alphaD)
is linear in (Nc^k, Dc), so a grid over (k, alphaD) with non-negative least squares gives good
starting points; the best few are polished with L-BFGS-B and analytic gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize, nnls

from .bootstrap import interval
from .objectives import get_loss
from .result import FitResult
from .table import validate_arrays

PARAMS = ("Nc", "Dc", "alphaN", "alphaD")
LEVEL = 0.9
# theta = (log Nc, log Dc, alphaN, alphaD); exponents kept in a physical range.
BOUNDS = [(-50.0, 150.0), (-50.0, 150.0), (1e-3, 3.0), (1e-3, 3.0)]
GRID_K = np.linspace(0.1, 4.0, 30)
GRID_AD = np.exp(np.linspace(math.log(0.01), math.log(2.0), 40))
N_POLISH = 5


@dataclass
class KaplanLaw:
    """L(N, D) = [(Nc/N)^(alphaN/alphaD) + Dc/D]^alphaD."""

    Nc: float
    Dc: float
    alphaN: float
    alphaD: float

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss at (N, D)."""
        return np.exp(_log_predict(_theta(self), np.log(np.asarray(N, float)), np.log(np.asarray(D, float))))

    def frontier(self, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compute-optimal (N*, D*, L*) at C = 6 N D.

        Pure Kaplan L has no irreducible term, but at fixed C the inner sum
        Nc^k N^-k + 6 Dc N / C is convex in N with its minimum at
        N* = (k Nc^k C / (6 Dc))^(1/(k+1)), k = alphaN/alphaD.
        """
        C = np.asarray(C, dtype=np.float64)
        k = self.alphaN / self.alphaD
        logN = (math.log(k) + k * math.log(self.Nc) + np.log(C) - math.log(6.0) - math.log(self.Dc)) / (k + 1)
        N = np.exp(logN)
        D = C / (6.0 * N)
        return N, D, self.predict(N, D)

    def params(self) -> dict[str, float]:
        """Parameters by name."""
        return {"Nc": self.Nc, "Dc": self.Dc, "alphaN": self.alphaN, "alphaD": self.alphaD}


def _theta(law: KaplanLaw) -> np.ndarray:
    return np.array([math.log(law.Nc), math.log(law.Dc), law.alphaN, law.alphaD])


def _law(theta: np.ndarray) -> KaplanLaw:
    return KaplanLaw(Nc=float(math.exp(theta[0])), Dc=float(math.exp(theta[1])),
                     alphaN=float(theta[2]), alphaD=float(theta[3]))


def _log_predict(theta, logN, logD):
    lnc, ldc, an, ad = theta
    u = (an / ad) * (lnc - logN)
    v = ldc - logD
    return ad * np.logaddexp(u, v)


def _objective(theta, logN, logD, logL, loss_fn, w):
    """Summed robust loss of log-residuals and its gradient in theta."""
    lnc, ldc, an, ad = theta
    k = an / ad
    u = k * (lnc - logN)
    v = ldc - logD
    s = np.logaddexp(u, v)
    pu = np.exp(u - s)
    pv = 1.0 - pu
    r = ad * s - logL
    val, d = loss_fn(r)
    d = d * w
    grad = np.array([
        np.dot(d, an * pu),
        np.dot(d, ad * pv),
        np.dot(d, pu * (lnc - logN)),
        np.dot(d, s - pu * u),
    ])
    return float(np.dot(val, w)), grad


def _seeds(logN, logD, logL, loss_fn, w):
    """Variable-projection grid over (k, alphaD): NNLS for (Nc^k, Dc) in relative error."""
    N, D = np.exp(logN), np.exp(logD)
    out = []
    for ad in GRID_AD:
        y = np.exp(logL / ad)
        scale = 1.0 / y
        for k in GRID_K:
            X = np.column_stack([N ** -k, 1.0 / D]) * (scale * np.sqrt(w))[:, None]
            coef, _ = nnls(X, np.sqrt(w), maxiter=200)
            if coef[0] <= 0 or coef[1] <= 0:
                continue
            theta = np.array([math.log(coef[0]) / k, math.log(coef[1]), k * ad, ad])
            theta = np.clip(theta, [b[0] for b in BOUNDS], [b[1] for b in BOUNDS])
            f, _ = _objective(theta, logN, logD, logL, loss_fn, w)
            if math.isfinite(f):
                out.append((f, theta))
    out.sort(key=lambda t: t[0])
    return [t for _, t in out[:N_POLISH]]


def _polish(theta0, logN, logD, logL, loss_fn, w):
    res = minimize(_objective, theta0, args=(logN, logD, logL, loss_fn, w), jac=True, method="L-BFGS-B",
                   bounds=BOUNDS, options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
    return res.x, float(res.fun)


def _fit_theta(logN, logD, logL, loss_fn, w, starts=None):
    starts = list(starts) if starts is not None else _seeds(logN, logD, logL, loss_fn, w)
    # the lowest objective over the polished starts (the first of equals)
    return min((_polish(t0, logN, logD, logL, loss_fn, w) for t0 in starts), key=lambda tf: tf[1], default=None)


def fit_kaplan(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    *,
    loss_fn: str = "huber",
    bootstrap: int = 0,
    seed: int = 0,
    budgets: Sequence[float] = (),
    level: float = LEVEL,
) -> FitResult:
    """Fit the Kaplan law by summed robust loss on log L; optional bootstrap intervals and budget optima.

    >>> truth = KaplanLaw(Nc=8.8e13, Dc=5.4e13, alphaN=0.076, alphaD=0.095)  # Kaplan et al.'s values
    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 2); D = np.tile([1e9, 1e10], 4)
    >>> r = fit_kaplan(N, D, truth.predict(N, D))
    >>> round(r.params["alphaN"], 3), round(r.params["alphaD"], 3), f"{r.params['Nc']:.3g}"
    (0.076, 0.095, '8.8e+13')
    """
    cols = validate_arrays({"N": N, "D": D, "loss": loss}, min_rows=len(PARAMS))
    logN, logD, logL = np.log(cols["N"]), np.log(cols["D"]), np.log(cols["loss"])
    fn = get_loss(loss_fn)
    w = np.ones_like(logN)
    found = _fit_theta(logN, logD, logL, fn, w)
    if found is None:
        raise ValueError("Kaplan fit: no admissible starting point (loss does not decrease with N and D?)")
    theta, obj = found
    law = _law(theta)
    warnings = _bound_warnings(theta)
    result = FitResult(law="kaplan", params=law.params(), objective=obj, n_points=len(logN), loss=loss_fn,
                       warnings=warnings)
    intervals: dict = {}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps = []
        for _ in range(bootstrap):
            wb = np.bincount(rng.integers(0, len(logN), len(logN)), minlength=len(logN)).astype(np.float64)
            t, _ = _polish(theta, logN, logD, logL, fn, wb)
            reps.append(t)
        reps = np.array(reps)
        for i, name in enumerate(PARAMS):
            samples = np.exp(reps[:, i]) if i < 2 else reps[:, i]
            iv = interval(law.params()[name], samples, level, log=i < 2)
            intervals[name] = _as_dict(iv)
        if budgets:
            intervals["budgets"] = {}
            for c in budgets:
                n0, d0, l0 = (float(x) for x in law.frontier(c))
                fr = np.array([[float(x) for x in _law(t).frontier(c)] for t in reps])
                intervals["budgets"][str(c)] = {
                    "N_opt": _as_dict(interval(n0, fr[:, 0], level, log=True)),
                    "D_opt": _as_dict(interval(d0, fr[:, 1], level, log=True)),
                    "loss_opt": _as_dict(interval(l0, fr[:, 2], level)),
                }
    elif budgets:
        nan = math.nan
        intervals["budgets"] = {}
        for c in budgets:
            n0, d0, l0 = (float(x) for x in law.frontier(c))
            intervals["budgets"][str(c)] = {q: {"estimate": v, "low": nan, "high": nan, "level": nan}
                                            for q, v in (("N_opt", n0), ("D_opt", d0), ("loss_opt", l0))}
    result.intervals = intervals
    return result


def law_from_result(result: FitResult) -> KaplanLaw:
    """The KaplanLaw of a fit result's params.

    >>> r = FitResult(law="kaplan", params={"Nc": 8.8e13, "Dc": 5.4e13, "alphaN": 0.076, "alphaD": 0.095},
    ...               objective=0.0, n_points=0)
    >>> round(float(law_from_result(r).predict(1e9, 1e11)), 4)
    2.3888
    """
    return KaplanLaw(**{k: float(result.params[k]) for k in PARAMS})


def _bound_warnings(theta) -> list[str]:
    out = []
    for name, v, (lo, hi) in zip(("log Nc", "log Dc", "alphaN", "alphaD"), theta, BOUNDS):
        if min(v - lo, hi - v) <= 1e-6 * max(1.0, abs(v)):
            out.append(f"{name} = {v:.4g} sits at its bound [{lo}, {hi}]: not identified by these runs")
    return out


def _as_dict(iv) -> dict[str, float]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level}
