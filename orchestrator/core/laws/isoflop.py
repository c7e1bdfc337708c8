"""IsoFLOP analysis: compute-optimal N and D as power laws of compute, by two published protocols.

`fit_isoflop` groups runs by compute budget C and estimates each budget's optimum two ways:

- **Approach 2** (Hoffmann et al. 2022, as published): a parabola of loss in log N per budget, its
  vertex N_opt(C); only budgets whose lowest run has a smaller and a larger size beside it (the
  minimum is bracketed), and only the runs near that minimum (`HALF_WINDOW`); then ordinary least
  squares of log N_opt on log C. D_opt is read off the budget's own (N, D) pairs at N_opt.
  Intervals: runs resampled within each budget.
- **Porian et al. 2024** (`isoflop_porian`): Akima interpolation of log loss in log N (and log D) on
  a fine grid, a seed-noise bootstrap whose median is each budget's optimum and whose spread
  weights the power-law fit; intervals from the same replicates.

Both are reported (``extra["methods"]``); ``params`` and ``intervals`` are those of ``method``
(Porian by default), and a warning says when the two exponents differ by more than their intervals.
Approach 1 (`lower_envelope`): for each N the lowest loss reached at or below C; its argmin N.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .bootstrap import interval
from .isoflop_porian import NOISE_ITERS, NOISE_LOW, best_per_size, fit_porian
from .result import FitResult
from .table import TableError, validate_arrays

# Budgets within this many decades of each other are one budget: published FLOP counts are
# rounded and digitised ones jitter (the Epoch extraction of Chinchilla spreads ~0.05 decades).
DEFAULT_GROUP_TOL = 0.03
MIN_SIZES_PER_BUDGET = 3
LEVEL = 0.9
PARAMS = ("N_exp", "N_coef", "D_exp", "D_coef")
METHODS = ("porian", "approach2")
# Approach 2 fits the parabola to the runs within this many e-folds of N of the lowest run (about
# 0.5 decade either side; at least 2 sizes a side when the budget has them): far from the
# minimum loss vs log N is not a parabola (the valley is asymmetric) and the vertex is biased.
HALF_WINDOW = 1.2
APPROACH2_BOOTSTRAP = 200  # resamples for Approach 2's intervals when `bootstrap` is 0


def _columns(N, D, loss, C) -> dict:
    cols = {"N": N, "D": D, "loss": loss}
    if C is not None:
        cols["C"] = C
    return cols


def group_budgets(C: np.ndarray, tol: float = DEFAULT_GROUP_TOL) -> np.ndarray:
    """Integer budget labels: runs whose log10 C converge to the same mode (flat kernel, half-width ``tol``).

    >>> group_budgets(np.array([1e19, 1.02e19, 1e20, 0.98e20, 1e21])).tolist()  # digitised budgets jitter
    [0, 0, 1, 1, 2]
    """
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


def _per_size(logN, logD, loss):
    """One run per model size (the lowest loss), sorted by N: arrays (logN, logD, loss)."""
    best = best_per_size(logN, loss)
    return logN[best], logD[best], loss[best]


def approach2_budget(logN: np.ndarray, logD: np.ndarray, loss: np.ndarray,
                     half_window: float = HALF_WINDOW) -> tuple[float, float, float] | str:
    """Hoffmann et al.'s parabola vertex for one budget: (log N_opt, log D_opt, loss_opt) or why not.

    >>> x = np.log(np.geomspace(1e8, 1e10, 9))
    >>> out = approach2_budget(x, np.log(1e20 / 6) - x, 3 + 0.1 * (x - np.log(1e9)) ** 2)
    >>> round(float(np.exp(out[0]) / 1e9), 6)
    1.0
    """
    x, xd, y = _per_size(logN, logD, loss)
    if len(x) < MIN_SIZES_PER_BUDGET:
        return f"< {MIN_SIZES_PER_BUDGET} distinct N"
    j = int(np.argmin(y))
    if j == 0 or j == len(x) - 1:
        return "lowest run at the edge of the sampled N (minimum not bracketed)"
    near = np.abs(x - x[j]) <= half_window
    near[max(0, j - 2):j + 3] = True  # at least two sizes a side where they exist
    xs, ys = x[near] - x[j], y[near]
    c2, c1, c0 = np.polyfit(xs, ys, 2)
    if not c2 > 0:
        return f"loss vs log N is not convex near the minimum (curvature {c2:.3g})"
    v = -c1 / (2 * c2)
    if not xs.min() <= v <= xs.max():
        return "parabola vertex outside the fitted runs"
    v += x[j]
    return float(v), float(np.interp(v, x, xd)), float(c0 - c1 * c1 / (4 * c2))


def _power_laws(logC: np.ndarray, logN_opt: np.ndarray, logD_opt: np.ndarray) -> dict[str, float]:
    """Least-squares power laws N_opt(C), D_opt(C) in log space (natural logs)."""
    n_exp, n_int = np.polyfit(logC, logN_opt, 1)
    d_exp, d_int = np.polyfit(logC, logD_opt, 1)
    return {"N_exp": float(n_exp), "N_coef": float(math.exp(n_int)),
            "D_exp": float(d_exp), "D_coef": float(math.exp(d_int))}


def _approach2(logN, logD, loss, logC, labels, half_window, warn=None):
    """Approach 2 over all budgets: (params or None, optima list)."""
    optima, skipped = [], {}
    for g in np.unique(labels):
        m = labels == g
        out = approach2_budget(logN[m], logD[m], loss[m], half_window)
        c = float(logC[m].mean())
        if isinstance(out, str):
            skipped.setdefault(out, []).append(f"C≈{math.exp(c):.3g}")
            continue
        optima.append((c, *out))
    if warn is not None:
        for why, where in skipped.items():
            # One line per reason: stray runs between budgets each form a tiny group.
            shown = ", ".join(where[:5]) + (", ..." if len(where) > 5 else "")
            warn.append(f"approach2: {len(where)} budget(s) skipped, {why} ({shown})")
    if len(optima) < 2:
        return None, optima
    a = np.array(optima)
    return _power_laws(a[:, 0], a[:, 1], a[:, 2]), optima


def fit_isoflop(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    C: Sequence[float] | None = None,
    *,
    method: str = "porian",
    bootstrap: int = 0,
    seed: int = 0,
    budgets: Sequence[float] = (),
    group_tol: float = DEFAULT_GROUP_TOL,
    level: float = LEVEL,
    half_window: float = HALF_WINDOW,
    noise: float = NOISE_LOW,
    noise_iters: int = NOISE_ITERS,
) -> FitResult:
    """N_opt = N_coef·C^N_exp and D_opt = D_coef·C^D_exp by Porian et al.'s protocol and by Approach 2.

    C defaults to 6ND. ``bootstrap`` resamples runs within budgets for Approach 2's intervals (200
    when 0); Porian's intervals come from its ``noise_iters`` seed-noise replicates (std ``noise``
    nats). ``params``/``intervals`` are ``method``'s; ``extra["methods"]`` holds both.

    >>> x = np.geomspace(1e8, 1e10, 9)
    >>> N = np.concatenate([x * s for s in (1, 3, 10)]); C = np.repeat([1e19, 9e19, 1e21], 9)
    >>> L = 1.8 + 480 / N ** 0.35 + 2100 / (C / (6 * N)) ** 0.37
    >>> r = fit_isoflop(N, C / (6 * N), L, C, noise_iters=200)
    >>> round(r.params["N_exp"], 1), sorted(r.extra["methods"])
    (0.5, ['approach2', 'porian'])
    """
    if method not in METHODS:
        raise ValueError(f"unknown isoFLOP method {method!r}; choose one of {', '.join(METHODS)}")
    cols = validate_arrays(_columns(N, D, loss, C), min_rows=2 * MIN_SIZES_PER_BUDGET)
    N_, D_, L_ = cols["N"], cols["D"], cols["loss"]
    C_ = cols["C"] if C is not None else 6.0 * N_ * D_
    logN, logD, logC = np.log(N_), np.log(D_), np.log(C_)
    labels = group_budgets(C_, group_tol)
    warnings: list[str] = []
    rng = np.random.default_rng(seed)

    # Porian et al.: its replicates are part of the estimate (the median), so they always run.
    por = fit_porian(logN, logD, L_, logC, labels, rng, iters=noise_iters, noise_low=noise, warn=warnings)
    a2_params, a2_optima = _approach2(logN, logD, L_, logC, labels, half_window, warnings)
    methods: dict = {}
    if a2_params is not None:
        k = bootstrap if bootstrap > 0 else APPROACH2_BOOTSTRAP
        reps = _approach2_bootstrap(logN, logD, L_, logC, labels, half_window, k, rng, warnings)
        methods["approach2"] = _method_doc(a2_params, reps, level, budgets, [
            {"C": math.exp(c), "N_opt": math.exp(n), "D_opt": math.exp(d), "loss_opt": lo}
            for c, n, d, lo in a2_optima], {"bootstrap": k, "half_window": half_window})
    if por is not None:
        methods["porian"] = _method_doc(por["params"], por["reps"], level, budgets, por["optima"],
                                        {"noise_iters": noise_iters, "noise": noise, "r2": por["r2"]})
    if method not in methods and methods:
        other = next(iter(methods))
        warnings.append(f"{method}: fewer than 2 usable budgets; reporting {other} instead")
        method = other
    if method not in methods:
        usable = len(a2_optima) if method == "approach2" else len(por["optima"]) if por else 0
        raise TableError(
            f"isoFLOP fit ({method}) needs at least 2 budgets with >= {MIN_SIZES_PER_BUDGET} distinct N and an "
            f"interior minimum; found {usable} usable of {len(np.unique(labels))} budgets")
    main = methods[method]
    if len(main["optima"]) == 2:
        warnings.append("only 2 usable budgets: the power laws pass exactly through them (no check of fit)")
    if budgets:
        warnings.append("isoflop gives N_opt and D_opt at a budget but no loss_opt (no loss law is fitted)")
    warnings.extend(_disagreement(methods))
    lc = np.log([o["C"] for o in main["optima"]])
    ln = np.log([o["N_opt"] for o in main["optima"]])
    resid = ln - (math.log(main["params"]["N_coef"]) + main["params"]["N_exp"] * lc)
    return FitResult(law="isoflop", params=dict(main["params"]), objective=float(np.sum(resid ** 2)),
                     n_points=len(N_), loss="least-squares", intervals=main["intervals"], warnings=warnings,
                     extra={"method": method, "optima": main["optima"], "n_budgets": len(main["optima"]),
                            "methods": methods})


def _method_doc(params, reps, level, budgets, optima, settings) -> dict:
    """One method's JSON: params, percentile intervals from its replicates, optima, settings."""
    intervals: dict = {}
    for name in PARAMS:
        intervals[name] = _as_dict(interval(params[name], np.asarray(reps[name]), level, log=name.endswith("coef")))
    if budgets:
        intervals["budgets"] = {}
        for c in budgets:
            entry = {}
            for q, coef, ex in (("N_opt", "N_coef", "N_exp"), ("D_opt", "D_coef", "D_exp")):
                est = params[coef] * c ** params[ex]
                s = np.asarray(reps[coef]) * c ** np.asarray(reps[ex])
                entry[q] = _as_dict(interval(est, s, level, log=True))
            intervals["budgets"][str(c)] = entry
    return {"params": dict(params), "intervals": intervals, "optima": optima, "n_budgets": len(optima),
            **settings}


def _disagreement(methods: dict) -> list[str]:
    """Warnings where the methods' exponents differ by more than their intervals allow.

    The test: |a1 - a2| > sqrt(h1² + h2²), h the half-width of each interval on the side facing
    the other estimate (the usual test for a difference of two independent estimates).
    """
    if len(methods) < 2:
        return []
    (n1, m1), (n2, m2) = methods.items()
    out = []
    for name in ("N_exp", "D_exp"):
        i1, i2 = m1["intervals"][name], m2["intervals"][name]
        a1, a2 = i1["estimate"], i2["estimate"]
        h1 = (i1["high"] - a1) if a2 > a1 else (a1 - i1["low"])
        h2 = (i2["high"] - a2) if a1 > a2 else (a2 - i2["low"])
        if not (math.isfinite(h1) and math.isfinite(h2)):
            continue
        if abs(a1 - a2) > math.hypot(h1, h2):
            out.append(f"isoFLOP methods disagree on {name}: {n1} {a1:.3f} [{i1['low']:.3f}, {i1['high']:.3f}] vs "
                       f"{n2} {a2:.3f} [{i2['low']:.3f}, {i2['high']:.3f}] (difference beyond both intervals); "
                       f"check that every budget's minimum is well inside its sampled N")
    return out


def _approach2_bootstrap(logN, logD, loss, logC, labels, half_window, k, rng, warnings):
    """Resample runs within each budget k times; Approach 2's params per resample (dict of arrays)."""
    groups = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    reps: list[dict[str, float]] = []
    for _ in range(k):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        p, _ = _approach2(logN[idx], logD[idx], loss[idx], logC[idx], labels[idx], half_window)
        if p is not None:
            reps.append(p)
    if len(reps) < k:
        warnings.append(f"approach2 bootstrap: {k - len(reps)} of {k} resamples had < 2 usable budgets "
                        f"and were dropped")
    return {name: np.array([r[name] for r in reps]) for name in PARAMS}


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

    >>> N = np.repeat(np.geomspace(1e7, 1e9, 17), 40); D = np.tile(np.geomspace(1e8, 1e12, 40), 17)
    >>> r = lower_envelope(N, D, 1.8 + 480 / N**0.35 + 2100 / D**0.35)  # alpha = beta: N_opt ~ C^0.5
    >>> round(r.params["N_exp"], 1), r.extra["n_budgets"]
    (0.5, 7)
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
    params = _power_laws(lc, ln, lc - math.log(6.0) - ln)
    resid = ln - (math.log(params["N_coef"]) + params["N_exp"] * lc)
    return FitResult(law="isoflop-envelope", params=params, objective=float(np.sum(resid ** 2)),
                     n_points=len(N_), loss="least-squares", warnings=warnings,
                     extra={"optima": optima, "n_budgets": len(optima)})
