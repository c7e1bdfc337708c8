"""One loss surface over every run: the lr*(N, D) and batch*(D) laws fitted jointly with a shared bowl.

Fitting a bowl per (N, D) cell and regressing the cells' optima (``hparams.fit_hparams``) spends
a cell's runs on that cell's own six bowl coefficients; with a coarse lattice (3× lr steps, a
few batches) each optimum is noisy, and the laws' exponents, extrapolated two or three decades,
inherit that noise. The Step-Law landscape (Li et al. 2025) says more: the bowl in
(log lr, log batch) keeps its shape across cells while its centre moves along power laws. So
every run constrains the same eight numbers:

    log L_r = m_c + w_lr·u² + w_b·v² + x·u·v,
    u = log lr_r − (a0 + a1·log N_c + a2·log D_c),   v = log batch_r − (b0 + b1·log D_c)

with a free level m_c per cell (profiled out: it is the cell's mean residual). Runs far from their
cell's best (beyond `window`) are left out — the quadratic is a local model — and diverged runs
are censored (no loss value). Robust least squares (soft-L1) tolerates an odd run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from scipy.optimize import least_squares

from .hparams import BatchLaw, HparamError, HparamFit, LrLaw
from .result import Interval

NOISE_SCALE = 0.003  # soft-L1 scale in log loss: a run's typical seed-to-seed noise


@dataclass
class SurfaceFit:
    """The jointly fitted laws and the shared bowl."""

    lr_law: LrLaw
    batch_law: BatchLaw
    lr_width: float  # w_lr: log-loss curvature along log lr
    batch_width: float  # w_b
    cross: float  # x
    n_runs: int
    n_cells: int
    rms: float  # residual scale (log loss)
    cov: Optional[np.ndarray] = None  # asymptotic covariance of (log lr coef, N_exp, D_exp, log batch coef, D_exp)
    lr_asym: float = 1.0  # curvature above lr* over that below (fitted with `asymmetric=True`; else 1)

    def predict(self, N: float, D: float) -> tuple[float, float]:
        """(lr*, batch* in tokens) at (N, D)."""
        return float(self.lr_law(N, D)), float(self.batch_law(D))

    def intervals(self, N: float, D: float, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        """`level` intervals of lr* and batch* at (N, D) from the fit's asymptotic covariance
        (Gauss–Newton, delta method in log space); None when the covariance is unavailable."""
        if self.cov is None or not np.all(np.isfinite(self.cov)):
            return None
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2))
        out = {}
        for name, value, g in (("lr", self.lr_law(N, D), np.array([1, math.log(N), math.log(D), 0, 0])),
                               ("batch", self.batch_law(D), np.array([0, 0, 0, 1, math.log(D)]))):
            sd = math.sqrt(max(float(g @ self.cov @ g), 0.0))
            out[name] = {"estimate": float(value), "low": float(value * math.exp(-z * sd)),
                         "high": float(value * math.exp(z * sd)), "level": level}
        return out

    def param_intervals(self, level: float = 0.9) -> dict[str, dict[str, float]]:
        """`level` intervals of the laws' five parameters from the asymptotic covariance, keyed
        `lr.coef`, `lr.N_exp`, `lr.D_exp`, `batch.coef`, `batch.D_exp` (a coefficient's interval is
        symmetric in log space); {} when the covariance is unavailable.

        >>> s = SurfaceFit(LrLaw(0.5, -0.3, 0.1), BatchLaw(2.0, 0.5), 0.02, 0.01, 0.0, 60, 6, 0.003,
        ...                cov=np.diag([0.01, 1e-4, 1e-4, 0.04, 4e-4]))
        >>> {k: (round(v["low"], 3), round(v["high"], 3)) for k, v in s.param_intervals(0.9).items()}["lr.N_exp"]
        (-0.316, -0.284)
        """
        if self.cov is None or not np.all(np.isfinite(self.cov)):
            return {}
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2))
        sd = np.sqrt(np.maximum(np.diag(self.cov), 0.0))
        values = (("lr.coef", self.lr_law.coef, True), ("lr.N_exp", self.lr_law.N_exp, False),
                  ("lr.D_exp", self.lr_law.D_exp, False), ("batch.coef", self.batch_law.coef, True),
                  ("batch.D_exp", self.batch_law.D_exp, False))
        out = {}
        for (name, value, log_scale), s in zip(values, sd):
            low, high = ((value * math.exp(-z * s), value * math.exp(z * s)) if log_scale
                         else (value - z * s, value + z * s))
            out[name] = {"estimate": float(value), "low": float(low), "high": float(high), "level": level}
        return out


def fit_surface(N: Sequence[float], D: Sequence[float], lr: Sequence[float], batch: Sequence[float],
                loss: Sequence[float], *, window: float = 0.1, start: Optional[tuple[float, ...]] = None,
                min_cells: int = 4, cells: Optional[Sequence[int]] = None, asymmetric: bool = False) -> SurfaceFit:
    """Fit the surface to runs (non-finite losses are diverged runs and are left out).

    `start`: (a0, a1, a2, b0, b1) to start from (e.g. a regression of per-cell optima); default
    a regression of each cell's best run. Needs `min_cells` cells with ≥ 3 runs each in the window,
    spanning ≥ 2 sizes and ≥ 2 token budgets, else `HparamError`. `cells`: a cell label per run
    (default: one cell per (N, D); a bootstrap labels a cell drawn twice as two cells).
    `asymmetric`: the lr curvature above lr* is w_lr·exp(s), a ninth parameter (`lr_asym` = exp(s));
    real bowls are often steeper on the diverging side.

    >>> g = np.meshgrid([1e7, 1e8, 1e9], [1e9, 1e10], np.geomspace(1e-4, 1e-1, 7), np.geomspace(2**14, 2**22, 5))
    >>> N, D, lr, batch = (x.ravel() for x in g)  # a grid of runs over (N, D, lr, batch)
    >>> lr_opt, batch_opt = 0.3 * N**-0.25 * D**0.05, 2.0 * D**0.5  # planted laws
    >>> bowl = np.exp(0.02 * np.log(lr / lr_opt)**2 + 0.01 * np.log(batch / batch_opt)**2)
    >>> loss = (2 + 400 / N**0.34 + 400 / D**0.28) * bowl
    >>> s = fit_surface(N, D, lr, batch, loss)
    >>> round(s.lr_law.N_exp, 3), round(s.lr_law.D_exp, 3), round(s.batch_law.D_exp, 3), round(s.lr_width, 3)
    (-0.25, 0.05, 0.5, 0.02)
    """
    N, D, lr, batch, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, lr, batch, loss))
    ok = np.isfinite(loss) & (loss > 0)
    keys = list(zip(N.tolist(), D.tolist())) if cells is None else list(cells)
    groups: dict[Any, list[int]] = {}
    for i in np.flatnonzero(ok):
        groups.setdefault(keys[i], []).append(int(i))
    rows, cell_of = [], []
    for idx in groups.values():
        best = min(loss[idx])
        near = [i for i in idx if loss[i] <= best * (1 + window)]
        if len(near) >= 3:
            cell_of += [len(set(cell_of))] * len(near)
            rows += near
    rows = np.array(rows, dtype=int)
    cell_of = np.array(cell_of, dtype=int)
    n_cells = int(cell_of.max()) + 1 if len(cell_of) else 0
    if n_cells < min_cells:
        raise HparamError(f"a joint surface needs ≥ {min_cells} cells with ≥ 3 runs within {window:.0%} of their best; "
                          f"got {n_cells}")
    logN, logD, x_lr, x_b, y = (np.log(a[rows]) for a in (N, D, lr, batch, loss))
    if len(set(logN)) < 2 or len(set(logD)) < 2:
        raise HparamError("a joint surface needs ≥ 2 model sizes and ≥ 2 token budgets among the cells")
    # The cell levels absorb between-cell moves, so the bowl is seen only within cells; and with two
    # values per cell a curvature trades off against the laws' centre (w·(log b1b2 − 2c)), so 3.
    for name, x in (("learning rates", x_lr), ("batches", x_b)):
        if sum(len(set(x[cell_of == c])) >= 3 for c in range(n_cells)) < 2:
            raise HparamError(f"a joint surface needs ≥ 2 cells that each tried ≥ 3 {name} near their best")
    counts = np.bincount(cell_of, minlength=n_cells)

    def residuals(p: np.ndarray) -> np.ndarray:
        a0, a1, a2, b0, b1, wl, wb, xc = p[:8]
        u = x_lr - (a0 + a1 * logN + a2 * logD)
        v = x_b - (b0 + b1 * logD)
        wu = wl * np.exp(p[8]) if asymmetric else wl
        r = y - (np.where(u > 0, wu, wl) * u * u + wb * v * v + xc * u * v)
        return r - (np.bincount(cell_of, weights=r, minlength=n_cells) / counts)[cell_of]  # m_c profiled out

    if start is None:
        start = _start_from_best(logN, logD, x_lr, x_b, y, cell_of, n_cells)
    p0 = np.array([*start, 0.01, 0.01, 0.0] + ([0.0] if asymmetric else []))
    # The asymmetry is bounded (×1/10 … ×10): a side with no run near the bowl leaves it unidentified.
    lo = np.array([-np.inf] * 5 + [1e-6, 1e-6, -np.inf] + ([-math.log(10)] if asymmetric else []))
    hi = np.array([np.inf] * 8 + ([math.log(10)] if asymmetric else []))
    res = least_squares(residuals, p0, bounds=(lo, hi), loss="soft_l1", f_scale=NOISE_SCALE, x_scale="jac")
    a0, a1, a2, b0, b1, wl, wb, xc = res.x[:8]
    asym = float(math.exp(res.x[8])) if asymmetric else 1.0
    if not (np.all(np.isfinite(res.x)) and abs(a0) < 700 and abs(b0) < 700) or 4 * wl * wb <= xc * xc:
        raise HparamError("the joint surface is not a bowl (no interior optimum): the runs do not bracket it")
    dof = max(1, len(rows) - n_cells - len(res.x))
    rms = float(np.sqrt(np.sum(res.fun ** 2) / dof))
    try:  # Gauss–Newton covariance (the robust loss's Jacobian), scaled by the residual variance
        cov = np.linalg.inv(res.jac.T @ res.jac)[:5, :5] * rms ** 2
    except np.linalg.LinAlgError:
        cov = None
    return SurfaceFit(LrLaw(math.exp(a0), float(a1), float(a2)), BatchLaw(math.exp(b0), float(b1)),
                      float(wl), float(wb), float(xc), len(rows), n_cells, rms, cov, asym)


def _start_from_best(logN, logD, x_lr, x_b, y, cell_of, n_cells) -> tuple[float, ...]:
    """Least squares of each cell's best run's (log lr, log batch) on the laws' regressors."""
    best = [np.flatnonzero(cell_of == c)[np.argmin(y[cell_of == c])] for c in range(n_cells)]
    A = np.stack([np.ones(n_cells), logN[best], logD[best]], axis=1)
    a = np.linalg.lstsq(A, x_lr[best], rcond=None)[0]
    b = np.linalg.lstsq(A[:, [0, 2]], x_b[best], rcond=None)[0]
    return (*a, *b)


def fit_surface_hparams(N: Sequence[float], D: Sequence[float], lr: Sequence[float], batch: Sequence[float],
                        loss: Sequence[float], *, bootstrap: int = 200, seed: int = 0, level: float = 0.9,
                        window: float = 0.1) -> HparamFit:
    """`fit_surface` as an `HparamFit` (method "surface", what `scalesweep fit-hparams --method
    surface` prints), with intervals from refits on resampled cells (percentiles of the draws).

    >>> g = np.meshgrid([1e7, 1e8, 1e9], [1e9, 1e10], np.geomspace(1e-4, 1e-1, 7), np.geomspace(2**14, 2**22, 5))
    >>> N, D, lr, batch = (x.ravel() for x in g)  # a grid of runs over (N, D, lr, batch)
    >>> lr_opt, batch_opt = 0.3 * N**-0.25 * D**0.05, 2.0 * D**0.5  # planted laws
    >>> bowl = np.exp(0.02 * np.log(lr / lr_opt)**2 + 0.01 * np.log(batch / batch_opt)**2)
    >>> loss = (2 + 400 / N**0.34 + 400 / D**0.28) * bowl
    >>> fit = fit_surface_hparams(N, D, lr, batch, loss, bootstrap=10)
    >>> fit.method, round(fit.lr_law.N_exp, 3), fit.intervals["lr"]["N_exp"].covers(-0.25)
    ('surface', -0.25, True)
    """
    N, D, lr, batch, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, lr, batch, loss))
    fit = fit_surface(N, D, lr, batch, loss, window=window)
    est = np.array([math.log(fit.lr_law.coef), fit.lr_law.N_exp, fit.lr_law.D_exp,
                    math.log(fit.batch_law.coef), fit.batch_law.D_exp])
    keys = sorted(set(zip(N.tolist(), D.tolist())))
    cell = np.array([keys.index(k) for k in zip(N.tolist(), D.tolist())])
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        picked = [np.flatnonzero(cell == c) for c in rng.integers(0, len(keys), len(keys))]
        rows = np.concatenate(picked)
        label = np.repeat(np.arange(len(picked)), [len(p) for p in picked])  # a cell drawn twice: two cells
        try:
            f = fit_surface(N[rows], D[rows], lr[rows], batch[rows], loss[rows], window=window, start=tuple(est),
                            cells=label)
        except (HparamError, ValueError, np.linalg.LinAlgError):
            continue
        draws.append([math.log(f.lr_law.coef), f.lr_law.N_exp, f.lr_law.D_exp, math.log(f.batch_law.coef),
                      f.batch_law.D_exp])
    draws = np.array(draws).reshape(-1, 5)
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    intervals: dict[str, dict[str, Interval]] = {"lr": {}, "batch": {}}
    for j, name in enumerate(("coef", "N_exp", "D_exp", "coef", "D_exp")):
        point = float(np.exp(est[j])) if name == "coef" else float(est[j])
        a, b = np.percentile(draws[:, j], [lo, hi]) if len(draws) >= 2 else (math.nan, math.nan)
        if name == "coef":
            a, b = np.exp(a), np.exp(b)
        intervals["lr" if j < 3 else "batch"][name] = Interval(point, float(a), float(b), level)
    warnings = [f"{bootstrap - len(draws)} of {bootstrap} bootstrap resamples could not be fitted (dropped)"] \
        if len(draws) < bootstrap else []
    return HparamFit(method="surface", lr_law=fit.lr_law, batch_law=fit.batch_law, cells=[], intervals=intervals,
                     warnings=warnings, n_runs=len(loss), n_diverged=int((~(np.isfinite(loss) & (loss > 0))).sum()),
                     bootstrap=bootstrap, level=level, seed=seed, draws=draws)
