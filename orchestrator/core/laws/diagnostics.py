"""Warnings when a design or a fit cannot identify a law's parameters (Chinchilla's by default)."""
from __future__ import annotations

import numpy as np

from . import varpro
from .bootstrap import size_groups

MIN_DISTINCT = 3  # distinct N (and D) values needed to pin an exponent and its coefficient
RATIO_SPREAD = 0.05  # std of log(D/N) below this: tokens per parameter is effectively constant
RIDGE_CORR = 0.995  # |correlation| between two parameters beyond which the fit is a ridge
COND_LIMIT = 1e10  # condition number of the scaled Gauss-Newton matrix beyond which it is singular


def identifiability_warnings(N: np.ndarray, D: np.ndarray, p: varpro.Problem, theta: np.ndarray,
                             samples: np.ndarray | None = None) -> list[str]:
    """Human-readable warnings about the design (D vs N) and the fit (bounds, flat ridges).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = varpro.Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> theta = varpro.from_natural({"E": 1.7, "A": 400, "B": 400, "alpha": 0.34, "beta": 0.28}, p)  # the optimum
    >>> identifiability_warnings(N, D, p, theta)  # a full grid of N and D: nothing to warn about
    []
    >>> Nt = np.array([1e7, 3e7, 1e8, 3e8, 1e9]); Dt = 20 * Nt  # every run at 20 tokens per parameter
    >>> pt = varpro.Problem.build(Nt, Dt, 1.7 + 400 / Nt**0.34 + 400 / Dt**0.28)
    >>> tt = varpro.from_natural({"E": 1.7, "A": 400, "B": 400, "alpha": 0.34, "beta": 0.28}, pt)
    >>> [w.split(" (")[0] for w in identifiability_warnings(Nt, Dt, pt, tt)]
    ['D is proportional to N in every run', 'near-singular fit']
    """
    used = p.weights > 0
    N, D = np.asarray(N, np.float64)[used], np.asarray(D, np.float64)[used]
    out: list[str] = []
    out += design_warnings(N, D)
    out += bound_warnings(theta, p)
    out += ridge_warnings(theta, p, samples)
    return out


def design_warnings(N: np.ndarray, D: np.ndarray, n_term: tuple[str, str] = ("alpha", "A"),
                    d_term: tuple[str, str] = ("beta", "B")) -> list[str]:
    """Too few distinct sizes/token counts, or D tied to N in every run.

    ``n_term`` / ``d_term`` name the (exponent, coefficient) of the law's N and D terms, so a
    warning names the fitted form's own parameters (Chinchilla's by default).

    >>> [w.split(":")[0] for w in design_warnings(np.array([1e7, 1e8, 1e9]), np.array([2e8, 2e9, 2e10]))]
    ['D is proportional to N in every run (tokens per parameter varies by 0.0% in log)']
    >>> design_warnings(np.array([1e7, 1e8]), np.array([1e9, 1e9]))[0]
    'only 2 distinct N value(s): alpha and A are not identifiable (need >= 3)'
    >>> design_warnings(np.array([1e7, 1e8, 1e9]), np.array([1e9, 1e9, 1e9]), ("alphaN", "Nc"), ("alphaD", "Dc"))[0]
    'only 1 distinct D value(s): alphaD and Dc are not identifiable (need >= 3)'
    """
    out = []
    n_N = len(np.unique(size_groups(N)))
    n_D = len(np.unique(size_groups(D)))
    if n_N < MIN_DISTINCT:
        out.append(f"only {n_N} distinct N value(s): {n_term[0]} and {n_term[1]} are not identifiable (need >= {MIN_DISTINCT})")
    if n_D < MIN_DISTINCT:
        out.append(f"only {n_D} distinct D value(s): {d_term[0]} and {d_term[1]} are not identifiable (need >= {MIN_DISTINCT})")
    lN, lD = np.log(N), np.log(D)
    spread = float(np.std(lD - lN))
    if len(N) > 1 and spread < RATIO_SPREAD:
        out.append(
            f"D is proportional to N in every run (tokens per parameter varies by {spread:.1%} in log): "
            f"the N and D terms cannot be separated, so {n_term[0]}/{d_term[0]} and the frontier are not identifiable"
        )
    elif len(N) > 2 and np.std(lN) > 0 and np.std(lD) > 0:
        r = float(np.corrcoef(lN, lD)[0, 1])
        if abs(r) > 0.999:
            k = float(np.polyfit(lN, lD, 1)[0])
            out.append(
                f"D follows N as D ~ N^{k:.2f} in every run (log-correlation {r:.4f}): "
                f"{n_term[0]} and {d_term[0]} are confounded; vary D at fixed N"
            )
    return out


def bound_warnings(theta: np.ndarray, p: varpro.Problem) -> list[str]:
    """Parameters pinned at their bounds.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = varpro.Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> theta = varpro.from_natural({"E": 1.7, "A": 400, "B": 400, "alpha": 0.34, "beta": 0.28}, p)  # the optimum
    >>> bound_warnings(theta, p)
    []
    >>> [w.split(" (")[0] for w in bound_warnings(np.array([p.e_max, *theta[1:4], 2.0]), p)]  # E, beta at bounds
    ['E is pinned at its upper bound', 'beta = 2 is pinned at its bound [0.01, 2.0]']
    """
    E, _, _, alpha, beta = (float(x) for x in theta)
    out = []
    if E >= p.e_max * (1 - 1e-6):
        out.append(f"E is pinned at its upper bound (the smallest observed loss, {p.e_max:.4g}): "
                   "the data do not show the loss flattening; E and the exponents are unreliable")
    elif E <= 1e-9:
        out.append("E is pinned at 0: the irreducible loss is not identified by these data")
    lo, hi = varpro.EXP_BOUNDS
    for name, x in (("alpha", alpha), ("beta", beta)):
        if x <= lo * (1 + 1e-6) or x >= hi * (1 - 1e-6):
            out.append(f"{name} = {x:.4g} is pinned at its bound [{lo}, {hi}]")
    return out


def ridge_warnings(theta: np.ndarray, p: varpro.Problem, samples: np.ndarray | None = None) -> list[str]:
    """Flat directions: near-singular Gauss-Newton matrix or strongly correlated parameters.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = varpro.Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> theta = varpro.from_natural({"E": 1.7, "A": 400, "B": 400, "alpha": 0.34, "beta": 0.28}, p)  # the optimum
    >>> ridge_warnings(theta, p)
    []
    >>> Nt = np.array([1e7, 3e7, 1e8, 3e8, 1e9]); Dt = 20 * Nt  # every run at 20 tokens per parameter
    >>> pt = varpro.Problem.build(Nt, Dt, 1.7 + 400 / Nt**0.34 + 400 / Dt**0.28)
    >>> tt = varpro.from_natural({"E": 1.7, "A": 400, "B": 400, "alpha": 0.34, "beta": 0.28}, pt)
    >>> [w.split(" (")[0] for w in ridge_warnings(tt, pt)]
    ['near-singular fit']
    """
    names = ("E", "log A", "log B", "alpha", "beta")
    out = []
    J = _jacobian(theta, p)
    JtJ = (J * p.weights[:, None]).T @ J
    scale = np.sqrt(np.maximum(np.diag(JtJ), 1e-300))
    M = JtJ / np.outer(scale, scale)
    cond = float(np.linalg.cond(M))
    if not np.isfinite(cond) or cond > COND_LIMIT:
        out.append(f"near-singular fit (scaled Gauss-Newton condition number {cond:.2g}): "
                   "some parameter combination is not determined by the data")
    else:
        cov = np.linalg.inv(M)
        sd = np.sqrt(np.abs(np.diag(cov)))
        corr = cov / np.outer(sd, sd)
        pairs = _strong_pairs(corr, names)
        if pairs:
            out.append("flat ridge between " + ", ".join(pairs) + " (local curvature): their individual values are poorly determined")
    if samples is not None and len(samples) >= 10:
        # Compare in centred coordinates: raw log A and alpha always correlate through log N0.
        cs = np.column_stack([
            samples[:, 0],
            np.log(np.maximum(samples[:, 1], 1e-300)) - samples[:, 3] * p.logN0,
            np.log(np.maximum(samples[:, 2], 1e-300)) - samples[:, 4] * p.logD0,
            samples[:, 3], samples[:, 4],
        ])
        ok = np.all(np.isfinite(cs), axis=1)
        cs = cs[ok]
        sd = cs.std(axis=0)
        if len(cs) >= 10 and np.all(sd > 0):
            pairs = _strong_pairs(np.corrcoef(cs.T), names)
            if pairs:
                out.append("bootstrap replicates lie on a ridge between " + ", ".join(pairs)
                           + ": report derived quantities (frontier, a) rather than these parameters")
    return out


def _strong_pairs(corr: np.ndarray, names) -> list[str]:
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if abs(corr[i, j]) > RIDGE_CORR:
                pairs.append(f"{names[i]} and {names[j]} (r = {corr[i, j]:+.3f})")
    return pairs


def _jacobian(theta: np.ndarray, p: varpro.Problem) -> np.ndarray:
    """d log(pred) / d theta at each point (centred coordinates)."""
    E, a, b, alpha, beta = theta
    t1 = np.exp(a - alpha * p.u)
    t2 = np.exp(b - beta * p.v)
    pred = E + t1 + t2
    return np.column_stack([np.ones_like(pred), t1, t2, -p.u * t1, -p.v * t2]) / pred[:, None]
