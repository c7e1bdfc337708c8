"""The Chinchilla law L(N, D) = E + A/N^alpha + B/D^beta: fit, predict, frontier, bootstrap, refit.

``fit_chinchilla`` returns a :class:`ChinchillaFit`: ``.law`` (a :class:`ChinchillaLaw` with
``predict`` and ``frontier``), ``.result`` (the JSON-clean :class:`FitResult` the CLI prints) and
``.samples`` (bootstrap parameter replicates, shape (K, 5) in ``PARAM_NAMES`` order, or None).
It also answers ``params``, ``objective``, ``intervals``, ``warnings`` and ``to_json()`` like a
FitResult, so callers that only want the result can treat it as one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from . import varpro
from .bootstrap import interval, resample_weights, size_groups
from .diagnostics import identifiability_warnings
from .objectives import DEFAULT_DELTA
from .result import FitResult, Interval, ResultView

PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
FlopRule = str | Callable[[np.ndarray, np.ndarray], np.ndarray]
# Positive, scale-like quantities get their bootstrap interval in log space.
_LOG_SCALE = {"A", "B", "N_opt", "D_opt", "tokens_per_param"}
DEFAULT_INTERVAL = "percentile"  # measured coverage: see docs/fitting.md


@dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A/N^alpha + B/D^beta with fixed parameters."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @classmethod
    def from_params(cls, params: dict[str, float]) -> "ChinchillaLaw":
        """Build from a {E, A, B, alpha, beta} dict."""
        return cls(*(float(params[k]) for k in PARAM_NAMES))

    @property
    def params(self) -> dict[str, float]:
        """The parameters by name."""
        return {k: float(getattr(self, k)) for k in PARAM_NAMES}

    @property
    def a(self) -> float:
        """Exponent of N*(C) under C = 6ND: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss at (N, D), elementwise."""
        N = np.asarray(N, dtype=np.float64)
        D = np.asarray(D, dtype=np.float64)
        return self.E + self.A * N ** (-self.alpha) + self.B * D ** (-self.beta)

    def frontier(self, C, flops: FlopRule = "6ND") -> dict[str, np.ndarray]:
        """Compute-optimal N_opt, D_opt, loss_opt, tokens_per_param for budgets C.

        ``flops="6ND"`` uses the closed form; a callable ``flops(N, D)`` (an exact FLOP count,
        increasing in D) is minimised numerically along each iso-FLOP curve.
        """
        C = np.atleast_1d(np.asarray(C, dtype=np.float64))
        n_opt = self._frontier_6nd(C)
        if not isinstance(flops, str):
            n_opt = np.array([self._frontier_exact(c, flops, n0) for c, n0 in zip(C, n_opt)])
            d_opt = np.array([_solve_D(flops, n, c) for n, c in zip(n_opt, C)])
        elif flops.upper() == "6ND":
            d_opt = C / (6.0 * n_opt)
        else:
            raise ValueError(f"unknown FLOP rule {flops!r}; use '6ND' or a callable flops(N, D)")
        return {"N_opt": n_opt, "D_opt": d_opt, "loss_opt": self.predict(n_opt, d_opt),
                "tokens_per_param": d_opt / n_opt}

    def _frontier_6nd(self, C: np.ndarray) -> np.ndarray:
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / s)
        return G * (C / 6.0) ** (self.beta / s)

    def _frontier_exact(self, C: float, flops: Callable, n_guess: float) -> float:
        def loss_at(logn: float) -> float:
            n = math.exp(logn)
            return float(self.predict(n, _solve_D(flops, n, C)))

        x0 = math.log(n_guess)
        res = minimize_scalar(loss_at, bounds=(x0 - 6.0, x0 + 6.0), method="bounded",
                              options={"xatol": 1e-10})
        return math.exp(res.x)


def _solve_D(flops: Callable, N: float, C: float) -> float:
    """D with flops(N, D) = C (flops increasing in D), found in log space."""
    d0 = math.log(C / (6.0 * N))
    f = lambda logd: math.log(float(flops(N, math.exp(logd)))) - math.log(C)  # noqa: E731
    lo, hi = d0 - 1.0, d0 + 1.0
    while f(lo) > 0:
        lo -= 2.0
    while f(hi) < 0:
        hi += 2.0
    return math.exp(brentq(f, lo, hi, xtol=1e-13))


@dataclass
class ChinchillaFit(ResultView):
    """A fitted Chinchilla law: the law, its FitResult, bootstrap replicates and fit state."""

    law: ChinchillaLaw
    result: FitResult
    samples: np.ndarray | None = None
    loss_fn: str = "huber"
    delta: float = DEFAULT_DELTA
    n_points: int = 0
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The FitResult's JSON document."""
        return self.result.to_json()


def fit_chinchilla(
    N, D, loss, *,
    loss_fn: str = "huber",
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    cluster: bool = False,
    seed: int = 0,
    budgets: Iterable[float] = (),
    level: float = 0.9,
    init: dict[str, float] | None = None,
    flops: FlopRule = "6ND",
    interval_method: str = DEFAULT_INTERVAL,
) -> ChinchillaFit:
    """Fit E + A/N^alpha + B/D^beta by the global summed-robust-loss optimum, with optional bootstrap.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> fit = fit_chinchilla(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)  # planted truth, no noise
    >>> {k: round(v, 3) for k, v in fit.params.items()}
    {'E': 1.7, 'A': 400.0, 'B': 400.0, 'alpha': 0.34, 'beta': 0.28}
    >>> f"{fit.law.frontier(1e21)['N_opt'][0]:.3g}"  # compute-optimal N at C = 1e21
    '1.86e+09'
    """
    with varpro.single_threaded_blas():
        p = varpro.Problem.build(N, D, loss, loss_fn=loss_fn, delta=delta)
        _check_size(p)
        extra = [varpro.from_natural(init, p)] if init else []
        theta, f = varpro.global_fit(p, extra_starts=extra)
        return _finish(p, theta, f, N, D, bootstrap=bootstrap, cluster=cluster, seed=seed,
                       budgets=budgets, level=level, flops=flops, interval_method=interval_method,
                       meta={"search": "global"})


def refit(
    previous: ChinchillaFit | ChinchillaLaw | dict,
    N, D, loss, *,
    loss_fn: str | None = None,
    delta: float | None = None,
    growth: float = 1.25,
    bootstrap: int = 0,
    cluster: bool = False,
    seed: int = 0,
    budgets: Iterable[float] = (),
    level: float = 0.9,
    flops: FlopRule = "6ND",
    interval_method: str = DEFAULT_INTERVAL,
) -> ChinchillaFit:
    """Refit after new observations, warm-started from ``previous``; global search when that is unsafe.

    The global search runs instead when the data grew by more than ``growth`` x since the previous
    fit, or when the warm-started optimum ends on a bound or fits the data clearly worse per point
    than the previous fit did (a sign the optimum moved to another basin).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28
    >>> first = fit_chinchilla(N[:14], D[:14], L[:14])
    >>> again = refit(first, N, D, L)  # two more runs: warm start from the previous optimum
    >>> again.meta["search"], round(again.params["alpha"], 3)
    ('warm', 0.34)
    >>> refit(fit_chinchilla(N[:8], D[:8], L[:8]), N, D, L).meta["search"]  # data doubled
    'global (data grew)'
    """
    prev_params = _params_of(previous)
    if isinstance(previous, ChinchillaFit):
        loss_fn = loss_fn or previous.loss_fn
        delta = previous.delta if delta is None else delta
        n_prev = previous.n_points
        prev_per_point = previous.objective / max(previous.n_points, 1)
    else:
        n_prev, prev_per_point = 0, math.inf
    loss_fn = loss_fn or "huber"
    delta = DEFAULT_DELTA if delta is None else delta
    with varpro.single_threaded_blas():
        return _refit(prev_params, n_prev, prev_per_point, N, D, loss, loss_fn=loss_fn, delta=delta,
                      growth=growth, bootstrap=bootstrap, cluster=cluster, seed=seed, budgets=budgets,
                      level=level, flops=flops, interval_method=interval_method)


def _refit(prev_params, n_prev, prev_per_point, N, D, loss, *, loss_fn, delta, growth, bootstrap, cluster,
           seed, budgets, level, flops, interval_method) -> ChinchillaFit:
    p = varpro.Problem.build(N, D, loss, loss_fn=loss_fn, delta=delta)
    _check_size(p)
    start = varpro.from_natural(prev_params, p)
    theta, f = varpro.polish(start, p)
    n = len(p.u)
    reason = None
    if n_prev == 0 or n > growth * n_prev:
        reason = "data grew"
    elif _on_bound(theta, p):
        reason = "warm start on a bound"
    elif f / n > 1.5 * prev_per_point + 1e-12:
        reason = "warm start fits worse"
    if reason:
        theta_g, f_g = varpro.global_fit(p, extra_starts=[theta])
        if f_g < f:
            theta, f = theta_g, f_g
    return _finish(p, theta, f, N, D, bootstrap=bootstrap, cluster=cluster, seed=seed, budgets=budgets,
                   level=level, flops=flops, interval_method=interval_method,
                   meta={"search": f"global ({reason})" if reason else "warm"})


def bootstrap_params(p: varpro.Problem, theta: np.ndarray, k: int, *, groups: np.ndarray | None = None,
                     seed: int = 0, chunk: int = 256) -> np.ndarray:
    """k bootstrap refits warm-started at theta (vectorised); natural params, shape (k, 5).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = (1.7 + 400 / N**0.34 + 400 / D**0.28) * np.exp(np.random.default_rng(0).normal(0, 0.01, 16))
    >>> p = varpro.Problem.build(N, D, L)
    >>> theta, _ = varpro.global_fit(p)
    >>> S = bootstrap_params(p, theta, 20, seed=0)
    >>> S.shape, bool(S[:, 3].min() < 0.34 < S[:, 3].max())  # replicates of alpha straddle the truth
    ((20, 5), True)
    """
    rng = np.random.default_rng(seed)
    W = resample_weights(len(p.u), k, rng, groups)
    thetas = np.concatenate([varpro.batch_polish(theta, p, W[i:i + chunk])[0] for i in range(0, k, chunk)])
    E, a, b, alpha, beta = thetas.T
    return np.column_stack([E, np.exp(a + alpha * p.logN0), np.exp(b + beta * p.logD0), alpha, beta])


def frontier_samples(samples: np.ndarray, budgets: Sequence[float], flops: FlopRule = "6ND") -> dict[str, np.ndarray]:
    """Frontier quantities for every replicate row of ``samples``: arrays of shape (k, n_budgets).

    >>> S = np.array([[1.7, 400, 400, 0.34, 0.28], [1.7, 400, 400, 0.30, 0.28]])  # rows: E, A, B, alpha, beta
    >>> fr = frontier_samples(S, [1e20, 1e21])
    >>> fr["N_opt"].shape, [f"{n:.3g}" for n in fr["N_opt"][:, 1]]
    ((2, 2), ['1.86e+09', '6.52e+09'])
    """
    C = np.asarray(budgets, dtype=np.float64)[None, :]
    if not isinstance(flops, str):
        fr = [ChinchillaLaw(*row).frontier(budgets, flops) for row in samples]
        return {key: np.array([f[key] for f in fr]) for key in fr[0]}
    E, A, B, alpha, beta = (samples[:, j:j + 1] for j in range(5))
    s = alpha + beta
    n_opt = (alpha * A / (beta * B)) ** (1.0 / s) * (C / 6.0) ** (beta / s)
    d_opt = C / (6.0 * n_opt)
    loss_opt = E + A * n_opt ** (-alpha) + B * d_opt ** (-beta)
    return {"N_opt": n_opt, "D_opt": d_opt, "loss_opt": loss_opt, "tokens_per_param": d_opt / n_opt}


def summarise(law: ChinchillaLaw, samples: np.ndarray | None, budgets: Sequence[float], level: float = 0.9,
              flops: FlopRule = "6ND", method: str = DEFAULT_INTERVAL) -> dict:
    """Intervals for the parameters, a = beta/(alpha+beta), and the frontier at each budget.

    >>> law = ChinchillaLaw(E=1.7, A=400, B=400, alpha=0.34, beta=0.28)
    >>> S = np.array([law.params[k] for k in PARAM_NAMES]) * np.random.default_rng(0).normal(1, 0.02, (50, 5))
    >>> s = summarise(law, S, [1e21])
    >>> sorted(s), list(s["budgets"])
    (['A', 'B', 'E', 'a', 'alpha', 'beta', 'budgets'], ['1e+21'])
    >>> bool(s["a"]["low"] < law.a < s["a"]["high"])
    True
    """
    budgets = [float(c) for c in budgets]
    have = samples is not None and len(samples) >= 2

    def iv(name: str, est: float, reps) -> dict:
        if not have:
            return vars(Interval(float(est), math.nan, math.nan, level))
        return vars(interval(est, reps, level, method, log=name in _LOG_SCALE))

    out: dict = {}
    for j, name in enumerate(PARAM_NAMES):
        out[name] = iv(name, law.params[name], samples[:, j] if have else None)
    a_reps = samples[:, 4] / (samples[:, 3] + samples[:, 4]) if have else None
    out["a"] = iv("a", law.a, a_reps)
    if budgets:
        est = law.frontier(budgets, flops)
        reps = frontier_samples(samples, budgets, flops) if have else None
        out["budgets"] = {
            budget_key(c): {key: iv(key, est[key][i], reps[key][:, i] if have else None) for key in est}
            for i, c in enumerate(budgets)
        }
    return out


def budget_key(c: float) -> str:
    """The key of budget C in `intervals['budgets']` (the same for every law).

    >>> budget_key(1e21), budget_key(10**21)
    ('1e+21', '1e+21')
    """
    return str(float(c))  # the same keys as the other laws: str(C)


def _finish(p, theta, f, N, D, *, bootstrap, cluster, seed, budgets, level, flops, interval_method, meta):
    nat = varpro.to_natural(theta, p)
    law = ChinchillaLaw.from_params(nat)
    samples = None
    if bootstrap and bootstrap > 0:
        groups = size_groups(np.asarray(N, dtype=np.float64)) if cluster else None
        samples = bootstrap_params(p, theta, int(bootstrap), groups=groups, seed=seed)
    warnings = identifiability_warnings(np.asarray(N, np.float64), np.asarray(D, np.float64), p, theta, samples)
    result = FitResult(
        law="chinchilla",
        params=law.params,
        objective=float(f),
        n_points=len(p.u),
        loss=p.loss_fn,
        intervals=summarise(law, samples, list(budgets), level, flops, interval_method),
        warnings=warnings,
        extra={"delta": p.delta, "flops": flops if isinstance(flops, str) else "exact",
               "bootstrap": int(bootstrap or 0), "cluster": bool(cluster), "seed": int(seed),
               "interval_method": interval_method, **meta},
    )
    return ChinchillaFit(law, result, samples, p.loss_fn, p.delta, len(p.u), meta)


def _check_size(p: varpro.Problem) -> None:
    n = int(np.count_nonzero(p.weights))
    if n < len(PARAM_NAMES):
        raise ValueError(f"{n} point(s): the Chinchilla law has {len(PARAM_NAMES)} parameters")


def _on_bound(theta: np.ndarray, p: varpro.Problem) -> bool:
    E, _, _, alpha, beta = theta
    lo, hi = varpro.EXP_BOUNDS
    return bool(E >= p.e_max * (1 - 1e-9) or min(alpha, beta) <= lo * (1 + 1e-6) or max(alpha, beta) >= hi * (1 - 1e-6))


def _params_of(previous) -> dict[str, float]:
    if isinstance(previous, ChinchillaFit):
        return previous.law.params
    if isinstance(previous, ChinchillaLaw):
        return previous.params
    if isinstance(previous, FitResult):
        return previous.params
    return dict(previous)
