"""IsoFLOP analysis (Hoffmann et al. 2022): compute-optimal N and D as power laws of compute.

Approach 2 (`fit_isoflop`): group runs by compute budget, fit a parabola of loss against log N in
each budget, take its vertex as N_opt(C), and fit N_opt = N_coef * C**N_exp and
D_opt = D_coef * C**D_exp across budgets. Approach 1 (`lower_envelope`): for each N take the
lowest loss reached at or below a compute C; the N with the lowest envelope at C is N_opt(C).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .bootstrap import interval
from .result import FitResult
from .table import TableError, validate_arrays

# Budgets within this many decades of each other are one budget: published FLOP counts are
# rounded and digitised ones jitter (the Epoch extraction of Chinchilla spreads ~0.05 decades).
DEFAULT_GROUP_TOL = 0.03
MIN_SIZES_PER_BUDGET = 3
LEVEL = 0.9
PARAMS = ("N_exp", "N_coef", "D_exp", "D_coef")


def _columns(N, D, loss, C) -> dict:
    cols = {"N": N, "D": D, "loss": loss}
    if C is not None:
        cols["C"] = C
    return cols


def group_budgets(C: np.ndarray, tol: float = DEFAULT_GROUP_TOL) -> np.ndarray:
    """Integer budget labels: runs whose log10 C converge to the same mode (flat kernel, half-width ``tol``)."""
    x = np.log10(np.asarray(C, dtype=np.float64))
    if tol <= 0:
        _, labels = np.unique(x, return_inverse=True)
        return labels
    # Mean shift in 1-D: each point climbs to the local mean of its neighbours, so a dense cluster
    # of nearly equal budgets collapses to one mode while chains of stragglers do not merge budgets.
    modes = x.copy()
    for _ in range(200):
        near = np.abs(modes[:, None] - x[None, :]) <= tol
        new = (near * x[None, :]).sum(axis=1) / near.sum(axis=1)
        if np.allclose(new, modes, rtol=0.0, atol=1e-12):
            break
        modes = new
    order = np.argsort(modes, kind="stable")
    labels = np.empty(len(x), dtype=np.int64)
    current, last = -1, -math.inf
    for i in order:
        if modes[i] - last > tol / 10:
            current += 1
            last = modes[i]
        labels[i] = current
    return labels


def _budget_optima(logN, loss, logC, labels, warn: list[str] | None):
    """Per-budget parabola vertices: arrays (logC, logN_opt, loss_opt) of the usable budgets."""
    out_c, out_n, out_l = [], [], []
    thin: list[str] = []
    for g in np.unique(labels):
        m = labels == g
        c_label = f"C≈{10 ** logC[m].mean():.3g}"
        x, y = logN[m], loss[m]
        if len(np.unique(np.round(x, 9))) < MIN_SIZES_PER_BUDGET:
            thin.append(c_label)
            continue
        xc = x.mean()
        c2, c1, c0 = np.polyfit(x - xc, y, 2)
        if not c2 > 0:
            if warn is not None:
                warn.append(f"budget {c_label}: loss vs log N is not convex (curvature {c2:.3g}); skipped")
            continue
        v = -c1 / (2 * c2)
        if not (x.min() - xc <= v <= x.max() - xc):
            if warn is not None:
                warn.append(f"budget {c_label}: parabola minimum lies outside the sampled N range; skipped")
            continue
        out_c.append(logC[m].mean())
        out_n.append(v + xc)
        out_l.append(c0 - c1 * c1 / (4 * c2))
    if thin and warn is not None:
        # One line, not one per budget: stray runs between budgets each form a tiny group.
        shown = ", ".join(thin[:5]) + (", ..." if len(thin) > 5 else "")
        warn.append(f"{len(thin)} budget group(s) with < {MIN_SIZES_PER_BUDGET} distinct N skipped ({shown})")
    return np.array(out_c), np.array(out_n), np.array(out_l)


def _power_laws(logC: np.ndarray, logN_opt: np.ndarray) -> dict[str, float]:
    """Least-squares power laws N_opt(C), D_opt(C) = C / (6 N_opt) in log space (natural logs)."""
    n_exp, n_int = np.polyfit(logC, logN_opt, 1)
    logD_opt = logC - math.log(6.0) - logN_opt
    d_exp, d_int = np.polyfit(logC, logD_opt, 1)
    return {"N_exp": float(n_exp), "N_coef": float(math.exp(n_int)),
            "D_exp": float(d_exp), "D_coef": float(math.exp(d_int))}


def _fit_once(logN, loss, logC, labels, warn=None):
    lc, ln, ll = _budget_optima(logN, loss, logC / math.log(10), labels, warn)
    if len(lc) < 2:
        return None, (lc, ln, ll)
    lc = lc * math.log(10)
    return _power_laws(lc, ln), (lc, ln, ll)


def fit_isoflop(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    C: Sequence[float] | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    budgets: Sequence[float] = (),
    group_tol: float = DEFAULT_GROUP_TOL,
    level: float = LEVEL,
) -> FitResult:
    """Approach 2: per-budget parabola vertices in log N, then power laws N_opt(C) and D_opt(C)."""
    cols = validate_arrays(_columns(N, D, loss, C), min_rows=2 * MIN_SIZES_PER_BUDGET)
    N_, D_, L_ = cols["N"], cols["D"], cols["loss"]
    C_ = cols["C"] if C is not None else 6.0 * N_ * D_
    logN, logC = np.log(N_), np.log(C_)
    labels = group_budgets(C_, group_tol)
    warnings: list[str] = []
    params, (lc, ln, ll) = _fit_once(logN, L_, logC, labels, warnings)
    if params is None:
        raise TableError(
            f"isoFLOP fit needs at least 2 budgets with >= {MIN_SIZES_PER_BUDGET} distinct N and a "
            f"convex loss-vs-log-N parabola; found {len(lc)} usable of {len(np.unique(labels))} budgets"
        )
    # Objective: residual sum of squares of the log N_opt power law (what the final fit minimised).
    resid = ln - (math.log(params["N_coef"]) + params["N_exp"] * lc)
    optima = [{"C": float(math.exp(c)), "N_opt": float(math.exp(n)), "D_opt": float(math.exp(c - n) / 6.0),
               "loss_opt": float(lo)} for c, n, lo in zip(lc, ln, ll)]
    result = FitResult(law="isoflop", params=params, objective=float(np.sum(resid ** 2)), n_points=len(N_),
                       loss="least-squares", warnings=warnings, extra={"optima": optima, "n_budgets": len(optima)})
    if len(optima) == 2:
        warnings.append("only 2 usable budgets: the power laws pass exactly through them (no check of fit)")
    if budgets:
        warnings.append("isoflop gives N_opt and D_opt at a budget but no loss_opt (no loss law is fitted)")
    if bootstrap > 0:
        result.intervals = _bootstrap(logN, L_, logC, labels, params, bootstrap, seed, budgets, level, warnings)
    elif budgets:
        result.intervals = {"budgets": {str(c): _budget_point(params, c) for c in budgets}}
    return result


def _budget_point(params: dict[str, float], c: float) -> dict[str, dict[str, float]]:
    n = params["N_coef"] * c ** params["N_exp"]
    d = params["D_coef"] * c ** params["D_exp"]
    nan = math.nan
    return {"N_opt": {"estimate": n, "low": nan, "high": nan, "level": nan},
            "D_opt": {"estimate": d, "low": nan, "high": nan, "level": nan}}


def _bootstrap(logN, loss, logC, labels, params, k, seed, budgets, level, warnings):
    """Resample runs within each budget k times; percentile intervals on params and budget optima."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    reps: list[dict[str, float]] = []
    for _ in range(k):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        p, _ = _fit_once(logN[idx], loss[idx], logC[idx], labels[idx])
        if p is not None:
            reps.append(p)
    if len(reps) < k:
        warnings.append(f"bootstrap: {k - len(reps)} of {k} resamples had < 2 usable budgets and were dropped")
    out: dict = {}
    for name in PARAMS:
        s = np.array([r[name] for r in reps])
        out[name] = _as_dict(interval(params[name], s, level, log=name.endswith("coef")))
    if budgets:
        out["budgets"] = {}
        for c in budgets:
            point = _budget_point(params, c)
            entry = {}
            for q, coef, ex in (("N_opt", "N_coef", "N_exp"), ("D_opt", "D_coef", "D_exp")):
                s = np.array([r[coef] * c ** r[ex] for r in reps])
                entry[q] = _as_dict(interval(point[q]["estimate"], s, level, log=True))
            out["budgets"][str(c)] = entry
    return out


def _as_dict(iv) -> dict[str, float]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level}


def lower_envelope(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    C: Sequence[float] | None = None,
    *,
    n_budgets: int = 12,
) -> FitResult:
    """Approach 1: per-N lower envelope of loss vs compute, its argmin N at each budget, then power laws.

    For each model size the envelope at compute C is the lowest loss any of its runs (or curve
    points) reached with compute <= C. At ``n_budgets`` log-spaced budgets spanning the data, the
    size with the lowest envelope is N_opt(C) and D_opt(C) = C / (6 N_opt); N_opt and D_opt are then
    fitted as power laws of C (params as in `fit_isoflop`). Budgets where the winning size is the
    smallest or largest one sampled are dropped (the optimum may lie outside the grid), with a
    warning. Works best with many D per N (training curves, WSD cooldown branches).
    """
    cols = validate_arrays(_columns(N, D, loss, C), min_rows=4)
    N_, D_, L_ = cols["N"], cols["D"], cols["loss"]
    C_ = cols["C"] if C is not None else 6.0 * N_ * D_
    sizes = np.unique(N_)
    if len(sizes) < 3:
        raise TableError(f"lower envelope needs at least 3 distinct N; got {len(sizes)}")
    # Budgets must be reachable by at least two sizes, or the argmin is decided by coverage alone.
    first_c = np.array([C_[N_ == n].min() for n in sizes])
    lo, hi = np.sort(first_c)[1], C_.max()
    if not hi > lo:
        raise TableError("lower envelope: runs do not overlap in compute across sizes")
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), n_budgets))
    warnings: list[str] = []
    optima = []
    for c in grid:
        env = np.array([L_[(N_ == n) & (C_ <= c * (1 + 1e-12))].min(initial=np.inf) for n in sizes])
        j = int(np.argmin(env))
        if j in (0, len(sizes) - 1):
            warnings.append(f"budget C={c:.3g}: best size is at the edge of the sampled N; dropped")
            continue
        optima.append({"C": float(c), "N_opt": float(sizes[j]), "D_opt": float(c / (6 * sizes[j])),
                       "loss_opt": float(env[j])})
    if len(optima) < 2:
        raise TableError(f"lower envelope: {len(optima)} budget(s) with an interior optimum; need at least 2")
    lc = np.log([o["C"] for o in optima])
    ln = np.log([o["N_opt"] for o in optima])
    params = _power_laws(lc, ln)
    resid = ln - (math.log(params["N_coef"]) + params["N_exp"] * lc)
    return FitResult(law="isoflop-envelope", params=params, objective=float(np.sum(resid ** 2)),
                     n_points=len(N_), loss="least-squares", warnings=warnings,
                     extra={"optima": optima, "n_budgets": len(optima)})
