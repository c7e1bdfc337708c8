"""Porian et al. (2024) isoFLOP protocol: interpolated per-budget optima, seed-noise bootstrap, weighted power law.

"Resolving Discrepancies in Compute-Optimal Scaling of Language Models" (NeurIPS 2024) estimates
a in N_opt ∝ C^a as follows (the authors' ``analysis.py``, ``interp_flop`` and
``fit_compute_optimal_power_laws``; re-implemented here, not copied):

1. Per budget, one loss per model size (the lowest if a size has several runs); budgets with < 3
   sizes are skipped.
2. Akima interpolation of log loss against log N over the sampled sizes, evaluated on a grid of
   ``(m - 1) * 25`` points spanning them (m = sizes); N* is the grid argmin. Akima is local (each
   piece uses two neighbours a side), so only the runs near the minimum shape N*.
3. "Seed noise" bootstrap: 1000 copies of the budget's losses with Gaussian noise added (std
   `seed_noise_std`: 0.002 nats for their RefinedWeb runs, 0.01 for OpenWebText2), each
   interpolated the same way. Replicates whose argmin is a grid end are invalid; a budget with
   fewer than half valid is dropped. The budget's observation is the **median** of the valid
   replicates' N*, its uncertainty sigma = max(std log N*, 0.33 · 25 · grid step) · 1000 / valid.
4. The same for D (tokens) with loss interpolated against log D; a budget is used only when both
   succeed.
5. log N* = log k + a · log C by least squares **weighted by 1 / sigma²**; the interval of a comes
   from refitting the i-th replicate of every budget (i = 1 .. the fewest valid replicates), with
   the same weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import Akima1DInterpolator

INTERP_MULTIPLIER = 25
NOISE_ITERS = 1000
MIN_STD_FACTOR = 0.33
# Their seed-noise model for RefinedWeb (RW_SEED_CONFIG): std 0.002 nats below log-loss 3, growing
# log-linearly to 0.05 at log-loss 7. Ordinary losses (< e^3 = 20 nats) all get `noise_low`.
NOISE_LOW, NOISE_HIGH, LOG_LOSS_LOW, LOG_LOSS_HIGH = 0.002, 0.05, 3.0, 7.0


def seed_noise_std(loss: np.ndarray, noise_low: float = NOISE_LOW, noise_high: float = NOISE_HIGH,
                   log_loss_low: float = LOG_LOSS_LOW, log_loss_high: float = LOG_LOSS_HIGH) -> np.ndarray:
    """Std of the seed-to-seed noise added to a loss (nats), Porian et al.'s schedule.

    >>> round(float(seed_noise_std(np.array([3.1]))[0]), 6)
    0.002
    """
    x = np.log(np.asarray(loss, dtype=np.float64))
    lo, hi = math.log(noise_low), math.log(noise_high)
    # The published code compares log(loss) with the thresholds; we keep that.
    return np.exp(np.interp(x, [log_loss_low, log_loss_high], [lo, hi]))


SIZE_TOL = 0.01  # sizes whose log N agree within this are one model (digitised N jitter)


def best_per_size(logN: np.ndarray, loss: np.ndarray, tol: float = SIZE_TOL) -> np.ndarray:
    """Indices of the lowest-loss run of each model size, sorted by N; sizes within ``tol`` in log N merge.

    >>> best_per_size(np.log([1e8, 1.001e8, 2e8]), np.array([3.1, 3.0, 2.9])).tolist()
    [1, 2]
    """
    order = np.argsort(logN, kind="stable")
    out, start, group = [], None, []
    for i in order:
        if start is not None and logN[i] - start > tol:
            out.append(group[int(np.argmin(loss[group]))])
            group, start = [], None
        if start is None:
            start = logN[i]
        group.append(i)
    if group:
        out.append(group[int(np.argmin(loss[group]))])
    return np.array(out, dtype=np.int64)


def _grid_argmin(logx: np.ndarray, logy: np.ndarray, n_grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Akima-interpolate columns of ``logy`` (m, k) over sorted ``logx`` on an n_grid grid; argmins."""
    grid = np.linspace(logx[0], logx[-1], n_grid)
    curves = Akima1DInterpolator(logx, logy, axis=0)(grid)  # (n_grid, k)
    idx = np.argmin(curves, axis=0)
    return grid, idx, curves[idx, np.arange(curves.shape[1])]


@dataclass
class Optimum:
    """One budget's interpolated optimum of x (log N or log D): observation, sigma and replicates."""

    log_opt: float          # median of the valid replicates (what the power law is fitted to)
    log_opt_clean: float    # argmin of the noise-free interpolation (nan when at a grid end)
    sigma: float            # inflated std of the replicates' log optimum (weights are 1 / sigma²)
    reps: np.ndarray        # valid replicates' log optimum
    loss_opt: float         # interpolated loss at the noise-free argmin


def interpolated_optimum(logx: np.ndarray, loss: np.ndarray, rng: np.random.Generator,
                         iters: int = NOISE_ITERS, noise_low: float = NOISE_LOW,
                         multiplier: int = INTERP_MULTIPLIER) -> Optimum | None:
    """Porian et al.'s per-budget optimum of loss over x (one loss per distinct x, >= 3 of them).

    >>> x = np.log(np.array([1e8, 2e8, 4e8, 8e8, 1.6e9]))
    >>> o = interpolated_optimum(x, 3.0 + 0.05 * (x - x[2]) ** 2, np.random.default_rng(0))
    >>> bool(abs(o.log_opt - x[2]) < 0.05)  # within two grid steps of the true minimum
    True
    """
    order = np.argsort(logx)
    logx, loss = logx[order], loss[order]
    m = len(logx)
    n_grid = (m - 1) * multiplier
    grid, idx, vals = _grid_argmin(logx, np.log(loss)[:, None], n_grid)
    clean = float(grid[idx[0]]) if 0 < idx[0] < n_grid - 1 else math.nan
    noisy = loss[:, None] + seed_noise_std(loss, noise_low)[:, None] * rng.standard_normal((m, iters))
    noisy = np.maximum(noisy, 1e-12)  # a log needs positive losses; never reached at sane noise
    _, ridx, _ = _grid_argmin(logx, np.log(noisy), n_grid)
    ok = (ridx > 0) & (ridx < n_grid - 1)
    n_ok = int(ok.sum())
    if n_ok < iters // 2:
        return None
    reps = grid[ridx[ok]]
    # Floor: a third of the data's spacing (the grid has `multiplier` steps per data interval),
    # then inflated by the share of failed replicates, as published.
    floor = MIN_STD_FACTOR * multiplier * (grid[1] - grid[0])
    sigma = max(float(np.std(reps)), floor) * iters / n_ok
    return Optimum(float(np.median(reps)), clean, sigma, reps, float(np.exp(vals[0])))


def weighted_power_law(logC: np.ndarray, logy: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of logy = intercept + slope · logC (weights 1 / sigma²).

    ``logy`` may be (n,) or (n, k) for k replicate sets at once; returns (slope, intercept).

    >>> s, i = weighted_power_law(np.log([1e18, 1e19, 1e20]), np.log([1e8, 10 ** 8.5, 1e9]), np.ones(3))
    >>> round(float(s), 6)
    0.5
    """
    w = 1.0 / np.asarray(sigma, dtype=np.float64) ** 2
    w = w / w.sum()
    xm = float(w @ logC)
    y = np.asarray(logy, dtype=np.float64)
    ym = np.tensordot(w, y, axes=(0, 0))
    dx = logC - xm
    slope = np.tensordot(w * dx, y - ym, axes=(0, 0)) / float(w @ dx ** 2)
    return slope, ym - slope * xm


def fit_porian(logN: np.ndarray, logD: np.ndarray, loss: np.ndarray, logC: np.ndarray, labels: np.ndarray,
               rng: np.random.Generator, *, iters: int = NOISE_ITERS, noise_low: float = NOISE_LOW,
               min_sizes: int = 3, warn: list[str] | None = None) -> dict | None:
    """The whole protocol on runs grouped by budget ``labels``; None with < 2 usable budgets.

    Returns ``params`` (N_exp, N_coef, D_exp, D_coef), ``reps`` (replicate params, arrays),
    ``optima`` (per budget: C, N_opt, D_opt, loss_opt, sigma_logN, sigma_logD) and ``r2``.

    >>> x = np.geomspace(1e8, 1e10, 9)
    >>> N = np.concatenate([x * s for s in (1, 3, 10)]); C = np.repeat([1e19, 9e19, 1e21], 9); D = C / (6 * N)
    >>> L = 1.8 + 480 / N**0.35 + 2100 / D**0.37  # N_opt ~ C^(0.37 / 0.72) = C^0.514
    >>> labels = np.repeat([0, 1, 2], 9)  # the budget of each run
    >>> out = fit_porian(np.log(N), np.log(D), L, np.log(C), labels, np.random.default_rng(0), iters=50)
    >>> round(out["params"]["N_exp"], 2), len(out["optima"])
    (0.51, 3)
    """
    cs, n_obs, d_obs, n_sig, d_sig, n_reps, d_reps, optima = [], [], [], [], [], [], [], []
    edge: list[str] = []
    for g in np.unique(labels):
        m = labels == g
        c = float(logC[m].mean())
        # One run per model size: the lowest loss (their groupby_action='min').
        best = np.flatnonzero(m)[best_per_size(logN[m], loss[m])]
        if len(best) < min_sizes:
            continue
        on = interpolated_optimum(logN[best], loss[best], rng, iters, noise_low)
        od = interpolated_optimum(logD[best], loss[best], rng, iters, noise_low)
        if on is None or od is None:
            edge.append(f"C≈{math.exp(c):.3g}")
            continue
        cs.append(c)
        n_obs.append(on.log_opt), d_obs.append(od.log_opt)
        n_sig.append(on.sigma), d_sig.append(od.sigma)
        n_reps.append(on.reps), d_reps.append(od.reps)
        optima.append({"C": math.exp(c), "N_opt": math.exp(on.log_opt), "D_opt": math.exp(od.log_opt),
                       "loss_opt": on.loss_opt, "sigma_logN": on.sigma, "sigma_logD": od.sigma})
    if edge and warn is not None:
        shown = ", ".join(edge[:5]) + (", ..." if len(edge) > 5 else "")
        warn.append(f"porian: {len(edge)} budget(s) dropped, the interpolated minimum at the edge of the sampled "
                    f"sizes in over half of the noise replicates ({shown})")
    if len(cs) < 2:
        return None
    lc = np.array(cs)
    n_sig_a, d_sig_a = np.array(n_sig), np.array(d_sig)
    n_exp, n_int = weighted_power_law(lc, np.array(n_obs), n_sig_a)
    d_exp, d_int = weighted_power_law(lc, np.array(d_obs), d_sig_a)
    # Replicate i takes the i-th valid replicate of every budget (their bootstrap_weighted).
    k = min(min(len(r) for r in n_reps), min(len(r) for r in d_reps))
    rn = np.stack([r[:k] for r in n_reps])
    rd = np.stack([r[:k] for r in d_reps])
    rn_exp, rn_int = weighted_power_law(lc, rn, n_sig_a)
    rd_exp, rd_int = weighted_power_law(lc, rd, d_sig_a)
    # R² of the weighted fit scored without weights, as their table reports it (sklearn's score).
    pred = n_int + n_exp * lc
    yo = np.array(n_obs)
    r2 = 1 - float(np.sum((yo - pred) ** 2)) / float(np.sum((yo - yo.mean()) ** 2)) if len(cs) > 2 else 1.0
    return {
        "params": {"N_exp": float(n_exp), "N_coef": math.exp(float(n_int)),
                   "D_exp": float(d_exp), "D_coef": math.exp(float(d_int))},
        "reps": {"N_exp": rn_exp, "N_coef": np.exp(rn_int), "D_exp": rd_exp, "D_coef": np.exp(rd_int)},
        "optima": optima,
        "r2": r2,
        "resid": yo - pred,
    }
