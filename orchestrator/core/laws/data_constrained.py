"""Data-constrained law (Muennighoff et al. 2023): repeated tokens and excess parameters decay in value.

    L = E + A / N'^alpha + B / D'^beta
    D' = U + U * R_D* * (1 - exp(-R_D / R_D*)),    R_D = max(D/U - 1, 0)   (epochs beyond the first)
    N' = U_N + U_N * R_N* * (1 - exp(-R_N / R_N*)), R_N = max(N/U_N - 1, 0)
    U_N = min(N, compute-optimal N for U unique tokens under the base Chinchilla law)

The compute-optimal N for D tokens under L = E + A/N^alpha + B/D^beta (C = 6ND) is
G * (G * D)^(beta/alpha) with G = (alpha A / (beta B))^(1/(alpha+beta)), as in the authors'
`utils/parametric_fit.ipynb` (`optimal_N(D_to_C(U))`) and their README's `D_to_N`.
Fits minimise the summed robust loss of log-residuals (objectives.LOSSES), like the notebook
(Huber, delta 1e-3, summed) but in float64 with analytic gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar, nnls

from .bootstrap import interval
from .objectives import get_loss
from .result import FitResult
from .table import TableError, validate_arrays

# The C4 Chinchilla fit the authors hold fixed when fitting R_D* and R_N*: huggingface/datablations,
# commit 13701315b163f1c54642b94ad237b2699187c3ee, utils/parametric_fit.ipynb ("Use C4 CC params")
# and README "Parametric Fit": [a, b, e, alpha, beta] = [6.255414, 7.3049974, 0.6254804,
# 0.3526596, 0.3526596] with A = exp(a), B = exp(b), E = exp(e) (alpha tied to beta), fitted to
# Chinchilla's C4 isoFLOP points. Their result with it: R_D* = 15.387756, R_N* = 5.309743.
C4_CHINCHILLA: dict[str, float] = {
    "E": math.exp(0.6254804),
    "A": math.exp(6.255414),
    "B": math.exp(7.3049974),
    "alpha": 0.3526596,
    "beta": 0.3526596,
}
PUBLISHED_R_D_STAR = 15.387756
PUBLISHED_R_N_STAR = 5.309743

BASE = ("E", "A", "B", "alpha", "beta")
PARAMS = BASE + ("R_D_star", "R_N_star")
LEVEL = 0.9
# theta = (log E, log A, log B, alpha, beta, log R_D*, log R_N*)
BOUNDS = [(-5.0, 5.0), (-10.0, 60.0), (-10.0, 60.0), (0.01, 2.0), (0.01, 2.0),
          (math.log(1e-2), math.log(1e4)), (math.log(1e-2), math.log(1e4))]
GRID_R = np.exp(np.linspace(math.log(0.3), math.log(300.0), 12))
GRID_EXP = np.linspace(0.1, 0.8, 8)
N_POLISH = 4
MAX_BASE_ITERS = 6


def compute_optimal_n(D, base: Mapping[str, float]) -> np.ndarray:
    """The N that is compute-optimal for D tokens under the base Chinchilla law (C = 6ND).

    >>> float(compute_optimal_n(2e10, {"A": 400, "B": 400, "alpha": 0.34, "beta": 0.34}))  # symmetric law: N* = D*
    20000000000.0
    >>> f"{compute_optimal_n(2e10, C4_CHINCHILLA):.3g}"  # the authors' C4 fit: N for 20B tokens
    '1.02e+09'
    """
    A, B, a, b = base["A"], base["B"], base["alpha"], base["beta"]
    G = (a * A / (b * B)) ** (1.0 / (a + b))
    return G * (G * np.asarray(D, dtype=np.float64)) ** (b / a)


def _repetition_features(N, D, U, base):
    """(log U_N, R_N, log U, R_D): the inputs of the effective N' and D'."""
    U_N = np.minimum(N, compute_optimal_n(U, base))
    R_N = np.maximum(N / U_N - 1.0, 0.0)
    R_D = np.maximum(D / U - 1.0, 0.0)
    return np.log(U_N), R_N, np.log(U), R_D


def _log_effective(log_u, R, log_rstar):
    """log(U + U R* (1 - exp(-R/R*))) and its derivative in log R*."""
    rs = math.exp(log_rstar)
    x = R / rs
    ex = np.exp(-x)
    g = 1.0 + rs * (1.0 - ex)
    dg = rs * ((1.0 - ex) - x * ex)  # d g / d log R*
    return log_u + np.log(g), dg / g


@dataclass
class DataConstrainedLaw:
    """The data-constrained law; U_N uses the compute-optimal N of the base (E, A, B, alpha, beta)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    R_D_star: float
    R_N_star: float
    base: dict[str, float] | None = None  # base law for U_N; defaults to this law's own five params

    def _base(self) -> dict[str, float]:
        return self.base if self.base is not None else {k: getattr(self, k) for k in BASE}

    def effective(self, N, D, U) -> tuple[np.ndarray, np.ndarray]:
        """Effective parameters N' and effective data D'."""
        N, D, U = (np.asarray(x, dtype=np.float64) for x in (N, D, U))
        lun, rn, lu, rd = _repetition_features(N, D, U, self._base())
        lnp, _ = _log_effective(lun, rn, math.log(self.R_N_star))
        ldp, _ = _log_effective(lu, rd, math.log(self.R_D_star))
        return np.exp(lnp), np.exp(ldp)

    def predict(self, N, D, U) -> np.ndarray:
        """Predicted loss of N parameters trained on D tokens drawn from U unique tokens."""
        Np, Dp = self.effective(N, D, U)
        return self.E + self.A / Np ** self.alpha + self.B / Dp ** self.beta

    def frontier(self, C, U: float | None = None) -> tuple[float, float, float]:
        """Compute-optimal (N*, D*, L*) at C = 6ND with at most U unique tokens (None: unlimited)."""
        C = float(C)

        def f(logN):
            N = math.exp(logN)
            D = C / (6.0 * N)
            return float(self.predict(N, D, D if U is None else min(U, D)))

        lo, hi = math.log(C / 6.0) / 2 - 15.0, math.log(C / 6.0) / 2 + 15.0
        grid = np.linspace(lo, hi, 121)
        j = int(np.argmin([f(x) for x in grid]))
        res = minimize_scalar(f, bounds=(grid[max(j - 1, 0)], grid[min(j + 1, 120)]), method="bounded",
                              options={"xatol": 1e-9})
        N = math.exp(res.x)
        return N, C / (6.0 * N), float(res.fun)

    def params(self) -> dict[str, float]:
        """Parameters by name."""
        return {k: float(getattr(self, k)) for k in PARAMS}


def _to_theta(p: Mapping[str, float]) -> np.ndarray:
    return np.array([math.log(p["E"]), math.log(p["A"]), math.log(p["B"]), p["alpha"], p["beta"],
                     math.log(p["R_D_star"]), math.log(p["R_N_star"])])


def _to_params(theta) -> dict[str, float]:
    return {"E": math.exp(theta[0]), "A": math.exp(theta[1]), "B": math.exp(theta[2]),
            "alpha": float(theta[3]), "beta": float(theta[4]),
            "R_D_star": math.exp(theta[5]), "R_N_star": math.exp(theta[6])}


def _full_objective(theta, feats, logL, loss_fn, w):
    """Summed robust loss of log-residuals and its gradient in all seven theta components."""
    lun, rn, lu, rd = feats
    e, a, b, al, be, lrd, lrn = theta
    lnp, dlnp = _log_effective(lun, rn, lrn)
    ldp, dldp = _log_effective(lu, rd, lrd)
    ta = a - al * lnp
    tb = b - be * ldp
    m = np.maximum(np.maximum(ta, tb), e)
    pe, pa, pb = np.exp(e - m), np.exp(ta - m), np.exp(tb - m)
    tot = pe + pa + pb
    logpred = m + np.log(tot)
    pe, pa, pb = pe / tot, pa / tot, pb / tot
    val, d = loss_fn(logpred - logL)
    d = d * w
    grad = np.array([
        np.dot(d, pe), np.dot(d, pa), np.dot(d, pb),
        -np.dot(d, pa * lnp), -np.dot(d, pb * ldp),
        -be * np.dot(d, pb * dldp), -al * np.dot(d, pa * dlnp),
    ])
    return float(np.dot(val, w)), grad


class _Problem:
    """A fit with some components of theta held fixed."""

    def __init__(self, feats, logL, loss_fn, w, free: np.ndarray, theta_fixed: np.ndarray):
        self.feats, self.logL, self.loss_fn, self.w = feats, logL, loss_fn, w
        self.free, self.theta_fixed = free, theta_fixed

    def full(self, x):
        t = self.theta_fixed.copy()
        t[self.free] = x
        return t

    def __call__(self, x):
        f, g = _full_objective(self.full(x), self.feats, self.logL, self.loss_fn, self.w)
        return f, g[self.free]

    def polish(self, x0):
        bounds = [BOUNDS[i] for i in np.flatnonzero(self.free)]
        res = minimize(self, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-12})
        return res.x, float(res.fun)


def _seeds(prob: _Problem) -> list[np.ndarray]:
    """Starting points: a grid over the nonlinear parameters; E, A, B by NNLS when they are free."""
    free = prob.free
    lun, rn, lu, rd = prob.feats
    L = np.exp(prob.logL)
    linear_free = free[:3].all()
    cands = []
    # A coarser decay grid when the exponents are searched too keeps the grid ~10^3 points.
    grid_r = GRID_R if not (free[3] or free[4]) else GRID_R[::2]
    rd_grid = grid_r if free[5] else [math.exp(prob.theta_fixed[5])]
    rn_grid = grid_r if free[6] else [math.exp(prob.theta_fixed[6])]
    al_grid = GRID_EXP if free[3] else [prob.theta_fixed[3]]
    be_grid = GRID_EXP if free[4] else [prob.theta_fixed[4]]
    for rds in rd_grid:
        ldp, _ = _log_effective(lu, rd, math.log(rds))
        for rns in rn_grid:
            lnp, _ = _log_effective(lun, rn, math.log(rns))
            for al in al_grid:
                for be in be_grid:
                    t = prob.theta_fixed.copy()
                    t[3], t[4], t[5], t[6] = al, be, math.log(rds), math.log(rns)
                    if linear_free:
                        # Relative-error NNLS for (E, A, B) given the exponents and decay constants.
                        X = np.column_stack([np.ones_like(L), np.exp(-al * lnp), np.exp(-be * ldp)]) / L[:, None]
                        coef, _ = nnls(X * np.sqrt(prob.w)[:, None], np.sqrt(prob.w), maxiter=300)
                        coef = np.maximum(coef, 1e-8)
                        t[:3] = np.log(coef)
                    t = np.clip(t, [b[0] for b in BOUNDS], [b[1] for b in BOUNDS])
                    f, _ = prob(t[free])
                    if math.isfinite(f):
                        cands.append((f, t[free]))
    cands.sort(key=lambda c: c[0])
    return [c[1] for c in cands[:N_POLISH]]


def _best(prob: _Problem, starts) -> tuple[np.ndarray, float]:
    # the lowest objective over the polished starts (the first of equals)
    return min((prob.polish(x0) for x0 in starts), key=lambda xf: xf[1], default=None)


def fit_data_constrained(
    N: Sequence[float],
    D: Sequence[float],
    U: Sequence[float],
    loss: Sequence[float],
    *,
    loss_fn: str = "huber",
    fixed: Mapping[str, float] | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    budgets: Sequence[float] = (),
    unique_tokens: float | None = None,
    level: float = LEVEL,
) -> FitResult:
    """Fit the data-constrained law; ``fixed`` holds named params (e.g. C4_CHINCHILLA) at given values.

    U_N uses the base law (E, A, B, alpha, beta): the fixed values when all five are fixed,
    otherwise the fit's own, iterated to a fixed point. Budgets give the frontier with at most
    ``unique_tokens`` unique tokens (None: unlimited, i.e. no repetition).

    >>> base = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.34}
    >>> truth = DataConstrainedLaw(**base, R_D_star=15.0, R_N_star=5.0)
    >>> N, U = np.full(4, 1e8), np.full(4, 1e9); D = U * np.array([1, 2, 4, 8])  # 1 to 8 epochs
    >>> r = fit_data_constrained(N, D, U, truth.predict(N, D, U), fixed={**base, "R_N_star": 5.0})
    >>> round(r.params["R_D_star"], 3)  # repeated tokens lose value at the planted rate
    15.0
    """
    cols = validate_arrays({"N": N, "D": D, "U": U, "loss": loss}, min_rows=1)
    N_, D_, U_, L_ = cols["N"], cols["D"], cols["U"], cols["loss"]
    fixed = dict(fixed or {})
    unknown = sorted(set(fixed) - set(PARAMS))
    if unknown:
        raise ValueError(f"fixed: unknown parameter(s) {', '.join(unknown)}; choose from {', '.join(PARAMS)}")
    free = np.array([k not in fixed for k in PARAMS])
    if len(N_) < int(free.sum()):
        raise TableError(f"{len(N_)} row(s): this fit has {int(free.sum())} free parameters and needs at least as many rows")
    warnings: list[str] = []
    over = U_ > D_ * (1 + 1e-9)
    if over.any():
        warnings.append(f"{int(over.sum())} run(s) with more unique tokens U than tokens seen D; treated as U = D")
        U_ = np.minimum(U_, D_)
    logL = np.log(L_)
    fn = get_loss(loss_fn)
    w = np.ones_like(logL)

    start = dict(C4_CHINCHILLA, R_D_star=PUBLISHED_R_D_STAR, R_N_star=PUBLISHED_R_N_STAR)
    start.update(fixed)
    theta_fixed = _to_theta(start)
    base_fixed = all(k in fixed for k in BASE)
    base = {k: start[k] for k in BASE}
    x = None
    for it in range(MAX_BASE_ITERS if not base_fixed else 1):
        feats = _repetition_features(N_, D_, U_, base)
        prob = _Problem(feats, logL, fn, w, free, theta_fixed)
        # Seed once; later iterations only move U_N a little, so polishing the last optimum suffices.
        starts = _seeds(prob) if x is None else [x]
        x, obj = _best(prob, starts)
        theta = prob.full(x)
        if base_fixed:
            break
        new_base = {k: v for k, v in _to_params(theta).items() if k in BASE}
        moved = max(abs(math.log(new_base[k] / base[k])) for k in BASE)
        base = new_base
        if moved < 1e-6:
            break
    else:
        warnings.append("U_N did not settle: base law still moving after the last refit")
    params = _to_params(theta)
    for i, name in enumerate(PARAMS):
        if free[i] and min(theta[i] - BOUNDS[i][0], BOUNDS[i][1] - theta[i]) <= 1e-6:
            warnings.append(f"{name} = {params[name]:.4g} sits at its bound: not identified by these runs")
    law = DataConstrainedLaw(**params, base=dict(base))
    result = FitResult(law="data-constrained", params=params, objective=obj, n_points=len(N_), loss=loss_fn,
                       warnings=warnings,
                       extra={"fixed": sorted(fixed), "base": dict(base), "unique_tokens": unique_tokens})
    intervals: dict = {}
    reps: list[dict[str, float]] = []
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        for _ in range(bootstrap):
            wb = np.bincount(rng.integers(0, len(logL), len(logL)), minlength=len(logL)).astype(np.float64)
            pb = _Problem(prob.feats, logL, fn, wb, free, theta_fixed)
            xb, _ = pb.polish(x)
            reps.append(_to_params(pb.full(xb)))
        if not base_fixed:
            warnings.append("bootstrap holds U_N at the point estimate's base law (not re-iterated per resample)")
        for i, name in enumerate(PARAMS):
            if free[i]:
                s = np.array([r[name] for r in reps])
                intervals[name] = _as_dict(interval(params[name], s, level, log=name not in ("alpha", "beta")))
    if budgets:
        if unique_tokens is None:
            warnings.append("budget optima assume unlimited unique tokens (pass unique_tokens for a data limit)")
        intervals["budgets"] = {}
        for c in budgets:
            n0, d0, l0 = law.frontier(c, unique_tokens)
            entry = {}
            if reps:
                fr = np.array([DataConstrainedLaw(**r, base=dict(base)).frontier(c, unique_tokens) for r in reps])
                for j, (q, v) in enumerate((("N_opt", n0), ("D_opt", d0), ("loss_opt", l0))):
                    entry[q] = _as_dict(interval(v, fr[:, j], level, log=q != "loss_opt"))
            else:
                entry = {q: {"estimate": v, "low": math.nan, "high": math.nan, "level": math.nan}
                         for q, v in (("N_opt", n0), ("D_opt", d0), ("loss_opt", l0))}
            intervals["budgets"][str(c)] = entry
    result.intervals = intervals
    return result


def law_from_result(result: FitResult) -> DataConstrainedLaw:
    """The DataConstrainedLaw of a fit result (with its base law for U_N).

    >>> base = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.34}
    >>> truth = DataConstrainedLaw(**base, R_D_star=15.0, R_N_star=5.0)
    >>> N, U = np.full(4, 1e8), np.full(4, 1e9); D = U * np.array([1, 2, 4, 8])
    >>> law = law_from_result(fit_data_constrained(N, D, U, truth.predict(N, D, U), fixed={**base, "R_N_star": 5.0}))
    >>> round(float(law.predict(1e8, 3.2e10, 1e9)), 4) == round(float(truth.predict(1e8, 3.2e10, 1e9)), 4)  # 32 epochs
    True
    """
    return DataConstrainedLaw(**{k: float(result.params[k]) for k in PARAMS}, base=result.extra.get("base"))


def _as_dict(iv) -> dict[str, float]:
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "level": iv.level}
