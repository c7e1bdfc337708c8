"""Hyperparameter laws: the optimal learning rate lr*(N, D) and batch*(D) from (N, D) grids of runs.

Each (N, D) cell of runs gives one optimum, found either by the Step-Law protocol (the runs within
0.25 % of the cell's lowest loss, all of them kept) or as the minimum of a *bowl*: a quadratic in
(log lr, log batch) fitted robustly to the cell's log losses. Across cells the optima follow

    log lr*    = c  + a · log N + b · log D
    log batch* = c' + d · log D            (batch in tokens)

fitted by least squares in log space, with bootstrap intervals (cells resampled with replacement
and refitted, spread widened by the small-sample factor; see ``docs/hparams.md``). Diverged runs (loss
NaN/inf or flagged) are censored: they never enter a loss fit, but they mark the learning rate as
too high at their batch, so no cell optimum is placed at or beyond them.

Long because lr*(N, D) and batch*(D) share one path: the per-cell optima (bowl or Step-Law), the regression
across cells and its bootstrap, into one `HparamFit`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .result import Interval, _clean

STEPLAW_THRESHOLD = 0.0025  # Step-Law: runs within 0.25 % of the cell's lowest loss are "optimal"
MIN_CELL_RUNS = 6  # a quadratic in two variables has six coefficients
BOWL_WINDOWS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, math.inf)  # relative loss windows tried in turn
BOWL_MIN_FIT_RUNS = 10  # runs a bowl window must hold (six coefficients plus slack for noise)
HUBER_K = 1.345  # Huber tuning constant: 95 % efficiency under Gaussian noise
NOISE_FLOOR = 1e-4  # smallest residual scale (log loss) the robust fit assumes
METHODS = ("steplaw", "bowl")
RESAMPLE = ("cells", "runs", "cells+runs")  # bootstrap units; see docs/hparams.md


class HparamError(ValueError):
    """Runs that cannot give a hyperparameter law: the message names the problem."""


# --------------------------------------------------------------------------------------- laws


@dataclass
class LrLaw:
    """lr* = coef · N^N_exp · D^D_exp."""

    coef: float
    N_exp: float
    D_exp: float

    def __call__(self, N: Any, D: Any) -> Any:
        """The optimal learning rate at (N, D)."""
        return self.coef * np.power(N, self.N_exp) * np.power(D, self.D_exp)


@dataclass
class BatchLaw:
    """batch* (tokens) = coef · D^D_exp."""

    coef: float
    D_exp: float

    def __call__(self, D: Any) -> Any:
        """The optimal batch in tokens for D training tokens."""
        return self.coef * np.power(D, self.D_exp)


def couple_lr(lr: float, batch_from: float, batch_to: float) -> float:
    """The learning rate for `batch_to` that matches `lr` tuned at `batch_from` (Adam: lr ∝ √batch).

    >>> couple_lr(1e-3, 2**19, 2**21)  # four times the batch: twice the learning rate
    0.002
    """
    # Square-root scaling keeps the Adam update's noise scale constant when the batch changes; it
    # holds near the optimum and below the critical batch size (beyond it lr saturates instead).
    if not (lr > 0 and batch_from > 0 and batch_to > 0):
        raise ValueError("couple_lr needs positive lr, batch_from and batch_to")
    return float(lr) * math.sqrt(float(batch_to) / float(batch_from))


# --------------------------------------------------------------------------------------- bowls


@dataclass
class Bowl:
    """A quadratic in (log lr, log batch) fitted to a cell's log losses, and its minimum."""

    lr: float  # the cell optimum
    batch: float
    loss: float  # the bowl's loss at the optimum
    convex: bool
    coeffs: tuple[float, ...]  # z = c0 + c1 u + c2 v + c3 u² + c4 u v + c5 v², u/v scaled log lr/batch
    center: tuple[float, float]  # (log lr, log batch) of u = v = 0
    scale: tuple[float, float]
    n_fit: int  # runs in the fit window
    window: float  # relative loss window used
    rms: float  # robust residual scale (log loss)
    constrained: bool = False  # moved below a diverged learning rate
    clamped: bool = False  # moved onto the edge of the sampled grid
    warnings: list[str] = field(default_factory=list)

    def log_loss_at(self, lr: Any, batch: Any) -> Any:
        """The bowl's log loss at (lr, batch)."""
        u = (np.log(lr) - self.center[0]) / self.scale[0]
        v = (np.log(batch) - self.center[1]) / self.scale[1]
        c = self.coeffs
        return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v

    def loss_at(self, lr: Any, batch: Any) -> Any:
        """The bowl's loss at (lr, batch)."""
        return np.exp(self.log_loss_at(lr, batch))


def _design(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)


def _huber_lstsq(X: np.ndarray, z: np.ndarray, iters: int = 30) -> tuple[np.ndarray, float]:
    """Huber regression by iteratively reweighted least squares; returns (coefficients, scale)."""
    beta = np.linalg.lstsq(X, z, rcond=None)[0]
    scale = NOISE_FLOOR
    for it in range(iters):
        r = z - X @ beta
        if it < 3:
            # MAD of residuals as the noise scale, re-estimated while the fit settles and then
            # frozen so IRLS converges; the floor stops a near-perfect fit from calling every
            # point an outlier.
            scale = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), NOISE_FLOOR)
        a = np.abs(r) / (HUBER_K * scale)
        w = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-300))
        Xw = X * w[:, None]
        try:
            new = np.linalg.solve(Xw.T @ X, Xw.T @ z)
        except np.linalg.LinAlgError:
            break
        # Converged when the fitted values move by a negligible fraction of the noise scale.
        done = it >= 3 and float(np.max(np.abs(X @ (new - beta)))) < 1e-3 * scale
        beta = new
        if done:
            break
    return beta, scale


def _lr_ceiling(x_div: np.ndarray, y_div: np.ndarray, y: float, tol: float) -> float:
    """The lowest diverged log lr that applies at log batch `y` (inf when none does)."""
    # A run that diverged at (lr_d, b_d) would also diverge at lr >= lr_d with a batch <= b_d
    # (smaller batches are noisier), so it bounds lr at every batch up to its own.
    applies = y_div >= y - tol
    return float(np.min(x_div[applies])) if applies.any() else math.inf


def fit_bowl(
    lr: Sequence[float],
    batch: Sequence[float],
    loss: Sequence[float],
    diverged: Sequence[bool] | None = None,
    *,
    windows: Sequence[float] = BOWL_WINDOWS,
) -> Bowl:
    """Fit a convex quadratic in (log lr, log batch) to one cell's runs; its minimum is the optimum.

    >>> lr, batch = (x.ravel() for x in np.meshgrid(np.geomspace(1e-4, 1e-1, 7), np.geomspace(2**14, 2**22, 5)))
    >>> loss = 3.0 * np.exp(0.02 * np.log(lr / 0.01)**2 + 0.01 * np.log(batch / 2e5)**2)  # one cell, a planted bowl
    >>> bowl = fit_bowl(lr, batch, loss)
    >>> round(bowl.lr, 6), round(bowl.batch), bowl.convex
    (0.01, 200000, True)
    """
    lr = np.asarray(lr, dtype=np.float64)
    batch = np.asarray(batch, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    div = _diverged_mask(loss, diverged)
    ok = ~div
    if ok.sum() < MIN_CELL_RUNS:
        raise HparamError(f"{int(ok.sum())} finite run(s) in the cell; a bowl needs at least {MIN_CELL_RUNS}")
    x_all, y_all = np.log(lr), np.log(batch)
    x, y, z = x_all[ok], y_all[ok], np.log(loss[ok])
    x_div, y_div = x_all[div], y_all[div]
    warnings: list[str] = []

    best = int(np.argmin(z))
    center = (float(x[best]), float(y[best]))
    # Scale by the sampled spread so the quadratic's coefficients are comparable in size.
    scale = (max(float(np.std(x)), 1e-6), max(float(np.std(y)), 1e-6))
    u, v = (x - center[0]) / scale[0], (y - center[1]) / scale[1]
    # Batch grids are often not log-uniform; tolerance for "same batch" is half the smallest gap.
    ys = np.unique(np.round(y_all, 9))
    ytol = 0.5 * float(np.min(np.diff(ys))) if len(ys) > 1 else 1e-9

    # The quadratic is a local model: fit the narrowest loss window that pins all six coefficients.
    zmin = float(z[best])
    X = None
    for w in (*windows, math.inf):
        sel = z <= zmin + math.log1p(w) if math.isfinite(w) else np.ones_like(z, dtype=bool)
        if sel.sum() < min(BOWL_MIN_FIT_RUNS, len(z)):
            continue
        X = _design(u[sel], v[sel])
        if np.linalg.matrix_rank(X) == 6:
            window = w
            break
        X = None
    if X is None:
        raise HparamError(
            "the cell's runs cannot pin a quadratic in (log lr, log batch): need at least 3 distinct "
            "learning rates and 3 batches, not all on one line"
        )
    beta, rms = _huber_lstsq(X, z[sel])
    c0, c1, c2, c3, c4, c5 = (float(b) for b in beta)
    H = np.array([[2 * c3, c4], [c4, 2 * c5]])
    convex = bool(c3 > 0 and c5 > 0 and 4 * c3 * c5 - c4 * c4 > 0)

    ulo, uhi = float(u.min()), float(u.max())
    vlo, vhi = float(v.min()), float(v.max())
    clamped = False
    if convex:
        uo, vo = (float(t) for t in np.linalg.solve(H, -np.array([c1, c2])))
        if not (ulo <= uo <= uhi and vlo <= vo <= vhi):
            # An extrapolated minimum is a guess about runs nobody made; stay on the sampled grid.
            clamped = True
            uo, vo = _box_minimum(beta, (ulo, uhi), (vlo, vhi))
            warnings.append("bowl minimum lies outside the sampled grid; moved to the grid's edge")
    else:
        # A saddle or ridge has no minimum: use the neighbourhood of the best run instead.
        near = z <= zmin + math.log1p(STEPLAW_THRESHOLD)
        uo, vo = float(np.mean(u[near])), float(np.mean(v[near]))
        warnings.append(
            "bowl is not convex (Hessian not positive-definite); optimum = mean of the runs within "
            f"{STEPLAW_THRESHOLD:.2%} of the best"
        )

    bowl = Bowl(
        lr=0.0, batch=0.0, loss=0.0, convex=convex, coeffs=(c0, c1, c2, c3, c4, c5),
        center=center, scale=scale, n_fit=int(sel.sum()), window=window, rms=rms,
        clamped=clamped, warnings=warnings,
    )
    xo, yo = center[0] + uo * scale[0], center[1] + vo * scale[1]
    if len(x_div):
        xo, yo, moved = _below_divergence(bowl, xo, yo, x, y, x_div, y_div, ytol)
        if moved:
            bowl.constrained = True
            warnings.append("optimum moved below a diverged learning rate at its batch")
    bowl.lr, bowl.batch = math.exp(xo), math.exp(yo)
    bowl.loss = float(bowl.loss_at(bowl.lr, bowl.batch))
    return bowl


def _box_minimum(beta: np.ndarray, ub: tuple[float, float], vb: tuple[float, float]) -> tuple[float, float]:
    """Minimum of the quadratic over a box, on a fine grid (the box is small; exactness is moot)."""
    uu, vv = np.meshgrid(np.linspace(*ub, 121), np.linspace(*vb, 121), indexing="ij")
    zz = _design(uu.ravel(), vv.ravel()) @ beta
    i = int(np.argmin(zz))
    return float(uu.ravel()[i]), float(vv.ravel()[i])


def _below_divergence(
    bowl: Bowl, xo: float, yo: float, x: np.ndarray, y: np.ndarray,
    x_div: np.ndarray, y_div: np.ndarray, ytol: float,
) -> tuple[float, float, bool]:
    """Move (xo, yo) to the bowl's lowest point whose lr is below every diverged lr at its batch."""
    if xo < _lr_ceiling(x_div, y_div, yo, ytol):
        return xo, yo, False
    # Search the sampled box, keeping points strictly below the ceiling (half a grid step of margin:
    # the divergence boundary lies somewhere between the last stable lr and the diverged one).
    xs = np.unique(np.round(np.concatenate([x, x_div]), 9))
    margin = 0.5 * float(np.min(np.diff(xs))) if len(xs) > 1 else 0.0
    gx = np.linspace(float(x.min()), float(x.max()), 161)
    gy = np.linspace(float(y.min()), float(y.max()), 161)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    ceil = np.array([_lr_ceiling(x_div, y_div, float(t), ytol) for t in gy])
    feasible = xx < (ceil[None, :] - margin)
    zz = np.where(feasible, bowl.log_loss_at(np.exp(xx), np.exp(yy)), np.inf)
    if not np.isfinite(zz).any():
        i = int(np.argmin(x))  # everything diverges: the smallest sampled lr is all we can say
        return float(x[i]), float(y[i]), True
    i = int(np.argmin(zz))
    return float(xx.ravel()[i]), float(yy.ravel()[i]), True


def _diverged_mask(loss: np.ndarray, diverged: Sequence[bool] | np.ndarray | None) -> np.ndarray:
    bad = ~np.isfinite(loss) | (loss <= 0)
    if diverged is not None:
        d = np.asarray(diverged)
        if d.shape != loss.shape:
            raise HparamError(f"diverged has {d.size} value(s) for {loss.size} run(s)")
        bad = bad | d.astype(bool)
    return bad


# --------------------------------------------------------------------------------------- cells


@dataclass
class CellOptimum:
    """The optimum of one (N, D) cell."""

    N: float
    D: float
    lr: float
    batch: float
    loss: float  # bowl: the bowl's loss at the optimum; steplaw: the cell's lowest loss
    best_loss: float  # the cell's lowest observed loss
    n_runs: int
    n_diverged: int
    n_used: int  # steplaw: runs kept (within 0.25 %); bowl: runs in the fit window
    convex: bool | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Cells:
    """Runs grouped by (N, D), as index arrays into the run columns."""

    N: np.ndarray
    D: np.ndarray
    index: list[np.ndarray]


def _group_cells(N: np.ndarray, D: np.ndarray) -> _Cells:
    keys = np.stack([np.round(np.log(N), 9), np.round(np.log(D), 9)], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    index = [np.flatnonzero(inv == k) for k in range(len(uniq))]
    return _Cells(N=np.array([N[i[0]] for i in index]), D=np.array([D[i[0]] for i in index]), index=index)


def _steplaw_cell(lr: np.ndarray, batch: np.ndarray, loss: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Indices (into the cell) of the runs within 0.25 % of the cell's lowest loss."""
    best = float(np.min(loss[ok]))
    return np.flatnonzero(ok & (np.abs(loss / best - 1.0) < STEPLAW_THRESHOLD))


# --------------------------------------------------------------------------------------- fit


@dataclass
class HparamFit:
    """Fitted lr*(N, D) and batch*(D) laws with bootstrap intervals and the per-cell optima."""

    method: str
    lr_law: LrLaw
    batch_law: BatchLaw
    cells: list[CellOptimum]
    intervals: dict[str, dict[str, Interval]]
    warnings: list[str]
    n_runs: int
    n_diverged: int
    bootstrap: int
    level: float
    seed: int
    resample: str = "cells"
    draws: np.ndarray = field(repr=False, default_factory=lambda: np.empty((0, 5)))
    # draws[k] = (log lr coef, N_exp, D_exp, log batch coef, batch D_exp) of bootstrap fit k

    def predict(self, N: float, D: float) -> tuple[float, float]:
        """(lr*, batch* in tokens) at model size N and D training tokens."""
        return float(self.lr_law(N, D)), float(self.batch_law(D))

    def predict_interval(self, N: float, D: float) -> tuple[Interval, Interval]:
        """Bootstrap intervals of (lr*, batch*) at (N, D)."""
        lr, batch = self.predict(N, D)
        if len(self.draws) == 0:
            return Interval(lr, math.nan, math.nan, self.level), Interval(batch, math.nan, math.nan, self.level)
        d = self.draws
        lo, hi = 50 * (1 - self.level), 50 * (1 + self.level)
        llr = d[:, 0] + d[:, 1] * math.log(N) + d[:, 2] * math.log(D)
        lb = d[:, 3] + d[:, 4] * math.log(D)
        return (
            Interval(lr, float(np.exp(np.percentile(llr, lo))), float(np.exp(np.percentile(llr, hi))), self.level),
            Interval(batch, float(np.exp(np.percentile(lb, lo))), float(np.exp(np.percentile(lb, hi))), self.level),
        )

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON document (NaN/inf become null)."""
        def ivs(group: str) -> dict[str, Any]:
            return {k: {"low": i.low, "high": i.high, "level": i.level} for k, i in self.intervals[group].items()}

        doc = {
            "method": self.method,
            "lr": {
                "coef": self.lr_law.coef, "N_exp": self.lr_law.N_exp, "D_exp": self.lr_law.D_exp,
                "intervals": ivs("lr"),
            },
            "batch": {"coef": self.batch_law.coef, "D_exp": self.batch_law.D_exp, "intervals": ivs("batch")},
            "bootstrap": {"resamples": self.bootstrap, "seed": self.seed, "level": self.level,
                          "resample": self.resample},
            "n_runs": self.n_runs,
            "n_diverged": self.n_diverged,
            "cells": [vars(c) for c in self.cells],
            "warnings": list(self.warnings),
        }
        return _clean(doc)


def _regress(logN: np.ndarray, logD: np.ndarray, loglr: np.ndarray, logb: np.ndarray) -> np.ndarray | None:
    """OLS of log lr on (1, log N, log D) and log batch on (1, log D); None when not identifiable."""
    A = np.stack([np.ones_like(logN), logN, logD], axis=1)
    B = A[:, [0, 2]]
    if np.linalg.matrix_rank(A) < 3:
        return None
    p = np.linalg.lstsq(A, loglr, rcond=None)[0]
    q = np.linalg.lstsq(B, logb, rcond=None)[0]
    return np.array([p[0], p[1], p[2], q[0], q[1]])


def _cell_points(
    method: str, lr: np.ndarray, batch: np.ndarray, loss: np.ndarray, ok: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(log lr, log batch) points a cell contributes to the across-cell regression."""
    if method == "steplaw":
        keep = _steplaw_cell(lr, batch, loss, ok)
        return np.log(lr[keep]), np.log(batch[keep])
    bowl = fit_bowl(lr, batch, loss, ~ok)
    return np.array([math.log(bowl.lr)]), np.array([math.log(bowl.batch)])


def fit_hparams(
    N: Sequence[float],
    D: Sequence[float],
    lr: Sequence[float],
    batch: Sequence[float],
    loss: Sequence[float],
    *,
    diverged: Sequence[bool] | None = None,
    method: str = "steplaw",
    bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.9,
    resample: str = "cells",
) -> HparamFit:
    """Fit lr* = c·N^a·D^b and batch* = c'·D^d (tokens) from runs over (N, D, lr, batch) grids.

    >>> g = np.meshgrid([1e7, 1e8, 1e9], [1e9, 1e10, 1e11], np.geomspace(1e-4, 1e-1, 7), np.geomspace(2**14, 2**22, 5))
    >>> N, D, lr, batch = (x.ravel() for x in g)  # a grid of runs over (N, D, lr, batch)
    >>> lr_opt, batch_opt = 0.3 * N**-0.25 * D**0.05, 2.0 * D**0.5  # planted laws
    >>> bowl = np.exp(0.02 * np.log(lr / lr_opt)**2 + 0.01 * np.log(batch / batch_opt)**2)
    >>> loss = (2 + 400 / N**0.34 + 400 / D**0.28) * bowl
    >>> fit = fit_hparams(N, D, lr, batch, loss, method="bowl", bootstrap=20)
    >>> round(fit.lr_law.N_exp, 3), round(fit.lr_law.D_exp, 3), round(fit.batch_law.D_exp, 3)
    (-0.25, 0.05, 0.5)
    """
    if method not in METHODS:
        raise HparamError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if resample not in RESAMPLE:
        raise HparamError(f"unknown resample {resample!r}; choose one of {', '.join(RESAMPLE)}")
    if not 0 < level < 1:
        raise HparamError(f"level must be in (0, 1), got {level}")
    if bootstrap < 0:
        raise HparamError(f"bootstrap must be >= 0, got {bootstrap}")
    cols = {}
    for name, col in (("N", N), ("D", D), ("lr", lr), ("batch", batch)):
        a = np.asarray(col, dtype=np.float64).ravel()
        if not np.isfinite(a).all():
            raise HparamError(f"{name}: NaN/inf value(s)")
        if (a <= 0).any():
            raise HparamError(f"{name}: non-positive value(s)")
        cols[name] = a
    loss_a = np.asarray(loss, dtype=np.float64).ravel()
    n = len(loss_a)
    if any(len(a) != n for a in cols.values()):
        raise HparamError("N, D, lr, batch and loss must have the same length")
    div = _diverged_mask(loss_a, None if diverged is None else np.asarray(diverged).ravel())
    ok = ~div
    N_a, D_a, lr_a, b_a = cols["N"], cols["D"], cols["lr"], cols["batch"]

    cells = _group_cells(N_a, D_a)
    warnings: list[str] = []
    optima: list[CellOptimum] = []
    pts: list[tuple[np.ndarray, np.ndarray]] = []
    for k, idx in enumerate(cells.index):
        where = f"cell N={cells.N[k]:.4g}, D={cells.D[k]:.4g}"
        n_ok = int(ok[idx].sum())
        if n_ok < MIN_CELL_RUNS:
            raise HparamError(f"{where}: {n_ok} finite run(s); each cell needs at least {MIN_CELL_RUNS}")
        c_lr, c_b, c_l, c_ok = lr_a[idx], b_a[idx], loss_a[idx], ok[idx]
        best = float(np.min(c_l[c_ok]))
        try:
            if method == "steplaw":
                keep = _steplaw_cell(c_lr, c_b, c_l, c_ok)
                opt = CellOptimum(
                    N=float(cells.N[k]), D=float(cells.D[k]),
                    lr=float(np.exp(np.mean(np.log(c_lr[keep])))), batch=float(np.exp(np.mean(np.log(c_b[keep])))),
                    loss=best, best_loss=best, n_runs=len(idx), n_diverged=int((~c_ok).sum()), n_used=len(keep),
                )
                pts.append((np.log(c_lr[keep]), np.log(c_b[keep])))
            else:
                bowl = fit_bowl(c_lr, c_b, c_l, ~c_ok)
                opt = CellOptimum(
                    N=float(cells.N[k]), D=float(cells.D[k]), lr=bowl.lr, batch=bowl.batch, loss=bowl.loss,
                    best_loss=best, n_runs=len(idx), n_diverged=int((~c_ok).sum()), n_used=bowl.n_fit,
                    convex=bowl.convex, warnings=list(bowl.warnings),
                )
                pts.append((np.array([math.log(bowl.lr)]), np.array([math.log(bowl.batch)])))
        except HparamError as exc:
            raise HparamError(f"{where}: {exc}") from None
        warnings.extend(f"{where}: {w}" for w in opt.warnings)
        optima.append(opt)

    logN_c, logD_c = np.log(cells.N), np.log(cells.D)
    if len(np.unique(np.round(logN_c, 9))) < 2 or len(np.unique(np.round(logD_c, 9))) < 2:
        raise HparamError(
            f"{len(cells.index)} cell(s) with {len(np.unique(logN_c))} distinct N and "
            f"{len(np.unique(logD_c))} distinct D; lr*(N, D) needs at least 2 of each"
        )
    est = _regress(*_stack(pts, logN_c, logD_c))
    if est is None:
        raise HparamError("log N and log D are collinear across cells; lr*(N, D) cannot separate them")
    if len(cells.index) < 4:
        warnings.append(f"only {len(cells.index)} cells: the three lr-law coefficients are barely determined")

    draws = _bootstrap(method, cells, lr_a, b_a, loss_a, ok, bootstrap, seed, resample)
    n_failed = bootstrap - len(draws)
    if n_failed:
        warnings.append(f"{n_failed} of {bootstrap} bootstrap resamples could not be fitted (dropped)")
    if len(draws) and "cells" in resample:
        # A pairs bootstrap over n cells underestimates the spread of a p-coefficient regression by
        # about sqrt((n - p) / n) (the HC1 degrees-of-freedom correction); with ~10 cells that is
        # 20 %, so widen each draw's deviation from the point estimate accordingly.
        n_c = len(cells.index)
        f_lr, f_b = math.sqrt(n_c / max(n_c - 3, 1)), math.sqrt(n_c / max(n_c - 2, 1))
        draws = est + (draws - est) * np.array([f_lr, f_lr, f_lr, f_b, f_b])
    names = ("coef", "N_exp", "D_exp", "coef", "D_exp")
    lo, hi = 50 * (1 - level), 50 * (1 + level)
    intervals: dict[str, dict[str, Interval]] = {"lr": {}, "batch": {}}
    for j, name in enumerate(names):
        group = "lr" if j < 3 else "batch"
        point = float(np.exp(est[j])) if name == "coef" else float(est[j])
        if len(draws) >= 2:
            a, b = np.percentile(draws[:, j], [lo, hi])
            if name == "coef":
                a, b = np.exp(a), np.exp(b)
            intervals[group][name] = Interval(point, float(a), float(b), level)
        else:
            intervals[group][name] = Interval(point, math.nan, math.nan, level)

    return HparamFit(
        method=method,
        lr_law=LrLaw(float(np.exp(est[0])), float(est[1]), float(est[2])),
        batch_law=BatchLaw(float(np.exp(est[3])), float(est[4])),
        cells=optima, intervals=intervals, warnings=warnings,
        n_runs=n, n_diverged=int(div.sum()), bootstrap=bootstrap, level=level, seed=seed, resample=resample,
        draws=draws,
    )


def _stack(
    pts: list[tuple[np.ndarray, np.ndarray]], logN_c: np.ndarray, logD_c: np.ndarray, which: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    which = range(len(pts)) if which is None else which
    logN = np.concatenate([np.full(len(pts[k][0]), logN_c[k]) for k in which])
    logD = np.concatenate([np.full(len(pts[k][0]), logD_c[k]) for k in which])
    return logN, logD, np.concatenate([pts[k][0] for k in which]), np.concatenate([pts[k][1] for k in which])


def _bootstrap(
    method: str, cells: _Cells, lr: np.ndarray, batch: np.ndarray, loss: np.ndarray, ok: np.ndarray,
    K: int, seed: int, resample: str = "cells",
) -> np.ndarray:
    """Law coefficients refitted on K resamples of cells and/or of the runs within each cell."""
    rng = np.random.default_rng(seed)
    n_cells = len(cells.index)
    logN_c, logD_c = np.log(cells.N), np.log(cells.D)
    out = []
    for _ in range(K):
        pick = rng.integers(0, n_cells, n_cells) if "cells" in resample else np.arange(n_cells)
        pts = []
        try:
            for k in pick:
                idx = cells.index[k]
                r = idx[rng.integers(0, len(idx), len(idx))] if "runs" in resample else idx
                pts.append(_cell_points(method, lr[r], batch[r], loss[r], ok[r]))
        except (HparamError, np.linalg.LinAlgError):
            continue  # a resample that lost a cell's identifiability says nothing about the law
        est = _regress(*_stack(pts, logN_c[pick], logD_c[pick]))
        if est is not None:
            out.append(est)
    return np.array(out).reshape(-1, 5)


def law_gap(
    fit: HparamFit,
    N: Sequence[float], D: Sequence[float], lr: Sequence[float], batch: Sequence[float], loss: Sequence[float],
    diverged: Sequence[bool] | None = None,
) -> list[dict[str, float]]:
    """Per cell: the bowl's loss at the law's predicted (lr, batch) relative to the cell's best run.

    >>> g = np.meshgrid([1e7, 1e8, 1e9], [1e9, 1e10, 1e11], np.geomspace(1e-4, 1e-1, 7), np.geomspace(2**14, 2**22, 5))
    >>> N, D, lr, batch = (x.ravel() for x in g)  # a grid of runs over (N, D, lr, batch)
    >>> lr_opt, batch_opt = 0.3 * N**-0.25 * D**0.05, 2.0 * D**0.5  # planted laws
    >>> bowl = np.exp(0.02 * np.log(lr / lr_opt)**2 + 0.01 * np.log(batch / batch_opt)**2)
    >>> loss = (2 + 400 / N**0.34 + 400 / D**0.28) * bowl
    >>> gaps = law_gap(fit_hparams(N, D, lr, batch, loss, method="bowl", bootstrap=0), N, D, lr, batch, loss)
    >>> len(gaps), max(abs(r["gap_to_bowl"]) for r in gaps) < 1e-9  # the law lands on every cell's bowl minimum
    (9, True)
    """
    N_a, D_a = np.asarray(N, dtype=np.float64), np.asarray(D, dtype=np.float64)
    lr_a, b_a, l_a = (np.asarray(a, dtype=np.float64) for a in (lr, batch, loss))
    ok = ~_diverged_mask(l_a, None if diverged is None else np.asarray(diverged))
    cells = _group_cells(N_a, D_a)
    rows = []
    for k, idx in enumerate(cells.index):
        bowl = fit_bowl(lr_a[idx], b_a[idx], l_a[idx], ~ok[idx])
        p_lr, p_b = fit.predict(float(cells.N[k]), float(cells.D[k]))
        best = float(np.min(l_a[idx][ok[idx]]))
        at = float(bowl.loss_at(p_lr, p_b))
        inside = bool(
            lr_a[idx].min() <= p_lr <= lr_a[idx].max() and b_a[idx].min() <= p_b <= b_a[idx].max()
        )
        rows.append({
            "N": float(cells.N[k]), "D": float(cells.D[k]), "lr": p_lr, "batch": p_b,
            "best_loss": best, "bowl_min_loss": bowl.loss, "loss_at_prediction": at,
            # gap: vs the best run (includes the best run's lucky noise); gap_to_bowl: the cost of
            # standing at the predicted point instead of the bowl's own minimum.
            "gap": at / best - 1.0, "gap_to_bowl": at / bowl.loss - 1.0, "inside_grid": inside,
        })
    return rows
