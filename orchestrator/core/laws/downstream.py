"""Downstream laws: predict a task's accuracy from (N, D) or compute, through a loss.

Two steps (Bhagia et al. 2024, the OLMo model ladder):

1. **loss** from scale: ``L(N, D) = E + A/N^alpha + B/D^beta`` (the Chinchilla fit of
   :mod:`.chinchilla`), or ``L(C) = E + A/C^alpha`` when only compute is known;
2. **accuracy** from loss, by a *link*:

   - ``sigmoid`` (Bhagia et al.): ``acc = chance + (ceiling - chance) / (1 + exp(k (L - L0)))``,
     k > 0 so accuracy falls as the loss grows; chance and ceiling fixed (from the table / 1.0)
     or fitted when given as None;
   - ``exponential`` (Gadre et al. 2024): top-1 error ``eps - k exp(-gamma L)``, i.e.
     ``acc = (1 - eps) + k exp(-gamma L)``, with eps, k, gamma fitted.

The loss of step 1 is whatever the table measured: the task's own loss (mean NLL of the correct
continuation), or a loss shared by every task (a validation loss, as Gadre et al. use). When no
loss was measured the two steps are composed through a *latent* loss ``z(N, D) = A'/N^alpha +
B'/D^beta`` fitted on the accuracies directly (``acc = link(z)``; the scale and offset of z are
absorbed into the link, so only its shape in N and D is learned).

Intervals: resampling rows, one bootstrap (both steps refitted on each resample, the prediction
recomputed, its central percentile interval at ``level``); with whole model sizes as the unit
(``cluster=True``), the CR2 cluster-robust standard error of the linearised fit (both steps, the
clusters shared; step 1's Huber fit as an M-estimator) with the exact critical value of its t statistic
under a working model (:mod:`.cr2`: the cluster bootstrap's percentiles under-cover with few sizes, the
leave-one-size-out jackknife over-covers), the bootstrap of sizes still giving the parameters' intervals. They are sampling intervals given the laws are
right; the backtests (:func:`backtest_by_size`) measure how wrong the laws are when extrapolating.

>>> import numpy as np
>>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
>>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28
>>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))
>>> fit = fit_downstream(N, D, acc, loss=L, chance=0.25)
>>> round(float(fit.predict([1e9], [1e11])["acc"][0]), 3) == round(float(
...     0.25 + 0.75 / (1 + np.exp(3.0 * (1.7 + 400 / 1e9**0.34 + 400 / 1e11**0.28 - 2.6)))), 3)
True

Long because the links, the compute law and the latent fit share one fitting core (`batch_lm` over many
starts, `batch` for the bootstrap) and one result, `DownstreamFit`, that backtests and predictions read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import varpro
from .bootstrap import resample_weights, size_groups
from .cr2 import Block, cr2_interval
from .result import FitResult, jsonable
from .table import TableError

LINKS = ("sigmoid", "exponential")
NEAR_CHANCE_SIGMA = 2.0  # a point is "at chance" when within this many standard errors of it
MIN_SIGNAL = 0.1  # best accuracy must clear chance by this fraction of (ceiling - chance)
MONOTONE_RHO = -0.5  # Spearman correlation of accuracy with loss above which we warn
# Predictions beyond this multiple of the largest fitted N are flagged: the Pythia far backtests
# (benchmarks/downstream.py --protocols) reach 21x; beyond it nothing has measured the error.
FAR_EXTRAPOLATION = 20.0
# How the rows of one model size weigh in the accuracy fit. "tokens": w = D / (largest D of the size).
# Why: intermediate checkpoints of one run are not the models a law of final accuracy describes (a
# cosine schedule has not annealed them, and small models can lose accuracy late in training), and
# the final rows are what a prediction of a finished model extrapolates; on Pythia's nested backtests
# (benchmarks/downstream.py, fits and targets <= 1.4B) "tokens" lowered the mean error.
CHECKPOINT_WEIGHTS = ("uniform", "tokens")
MIN_SIZES = 4  # a latent fit on fewer model sizes is flagged (benchmarks/downstream.py --protocols)
SATURATION_SIGMA = 3.0  # a row this many standard errors below its size's earlier best has saturated
_TINY = 1e-300


class DownstreamError(TableError):
    """Inputs a downstream fit cannot use; the message names the problem."""


# --------------------------------------------------------------------------------------------
# A small batched Levenberg-Marquardt: K weightings (bootstrap resamples or starts) at once.
# --------------------------------------------------------------------------------------------

def batch_lm(model: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], y: np.ndarray, theta0: np.ndarray,
             W: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_iter: int = 300,
             rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Minimise sum_i W[k, i] (pred_k,i - y_i)^2 for every row k of theta0 / W at once.

    ``model(theta)`` with theta of shape (K, P) returns predictions (K, n) and the Jacobian
    (K, n, P). Steps are clipped into [lo, hi] and kept only when the objective drops.
    Returns thetas (K, P) and objectives (K,).

    >>> x = np.linspace(0.0, 2.0, 20); y = 2.0 * np.exp(-1.5 * x)
    >>> def model(th):  # y = a exp(-b x) for rows th = (a, b): predictions (K, n), Jacobian (K, n, 2)
    ...     a, b = th[:, :1], th[:, 1:]
    ...     e = np.exp(-b * x)
    ...     return a * e, np.stack([e, -a * x * e], axis=-1)
    >>> th, f = batch_lm(model, y, np.array([[1.0, 1.0], [3.0, 0.5]]), np.ones((2, 20)), np.zeros(2), np.full(2, 10.0))
    >>> th.round(6).tolist()  # both starts reach (a, b) = (2, 1.5)
    [[2.0, 1.5], [2.0, 1.5]]
    """
    theta = np.clip(np.array(theta0, dtype=np.float64), lo, hi)
    W = np.asarray(W, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    K, P = theta.shape

    def evaluate(th, w, yy):
        with np.errstate(over="ignore", invalid="ignore"):
            pred, J = model(th)
            r = pred - yy
            f = (w * r ** 2).sum(axis=1)
        finite = np.isfinite(r).all(axis=1)
        f = np.where(finite, f, np.inf)
        # Made finite once per evaluation (not at every iteration): the normal equations need it.
        r = r if finite.all() else np.nan_to_num(r)
        J = J if np.isfinite(J).all() else np.nan_to_num(J)
        return f, r, J

    f, r, J = evaluate(theta, W, y)
    J = np.array(J, dtype=np.float64)  # writable: accepted rows are updated in place
    lam = np.full(K, 1e-3)
    active = np.isfinite(f)
    eye = np.eye(P)
    for _ in range(max_iter):
        # Only the rows still moving are computed: a bootstrap's tail of slow rows costs little.
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        Ja, ra, Wa, la, fa = J[idx], r[idx], W[idx], lam[idx], f[idx]
        Jt = np.swapaxes(Ja, 1, 2)
        H = (Jt * Wa[:, None, :]) @ Ja
        g = (Jt @ (Wa * ra)[..., None])[..., 0]
        dH = np.diagonal(H, axis1=1, axis2=2)
        A = H + la[:, None, None] * (dH[:, :, None] * eye + 1e-9 * eye)
        try:
            step = -np.linalg.solve(A, g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = -np.stack([np.linalg.lstsq(a, gg, rcond=None)[0] for a, gg in zip(A, g)])
        step = step if np.isfinite(step).all() else np.nan_to_num(step)
        cand = np.clip(theta[idx] + step, lo, hi)
        f_new, r_new, J_new = evaluate(cand, Wa, y[idx] if y.ndim == 2 else y)
        ok = f_new < fa
        rel = np.where(ok, (fa - f_new) / np.maximum(fa, 1e-300), 0.0)
        moved = idx[ok]
        theta[moved], f[moved], r[moved], J[moved] = cand[ok], f_new[ok], r_new[ok], J_new[ok]
        la = np.where(ok, np.maximum(la / 3.0, 1e-9), la * 4.0)
        lam[idx] = la
        active[idx] = ~((ok & (rel < rtol)) | (la > 1e12))
    return theta, f


def _jacobian(shape: tuple[int, ...], cols: list[np.ndarray]) -> np.ndarray:
    """Stack derivative columns (each broadcastable to ``shape``) along a last axis."""
    J = np.empty(shape + (len(cols),))
    for i, c in enumerate(cols):
        J[..., i] = c
    return J


def _best_of_starts(model, y, starts: np.ndarray, w: np.ndarray, lo, hi) -> np.ndarray:
    """Polish every start on the full data (weights w) and keep the best."""
    W = np.broadcast_to(w, (len(starts), len(w)))
    thetas, f = batch_lm(model, y, starts, W, lo, hi)
    return thetas[int(np.argmin(f))]


class _LeastSquares:
    """The two fits every problem below makes of its model ``value(theta, x)`` at its inputs ``x``
    against its targets ``y`` (within bounds ``lo``, ``hi``, ``P`` parameters, from its ``starts()``):
    the full fit and the bootstrap's batch."""

    x: Any
    y: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    P: int

    def value(self, theta: np.ndarray, x: Any) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def starts(self) -> np.ndarray:
        raise NotImplementedError

    def model(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.value(theta, self.x)

    def fit(self, w: np.ndarray) -> np.ndarray:
        return _best_of_starts(self.model, self.y, self.starts(), w, self.lo, self.hi)

    def batch(self, theta: np.ndarray, W: np.ndarray) -> np.ndarray:
        return batch_lm(self.model, self.y, np.broadcast_to(theta, (len(W), self.P)), W, self.lo, self.hi)[0]


# --------------------------------------------------------------------------------------------
# Step 2: links from loss to accuracy.
# --------------------------------------------------------------------------------------------

class _LinkProblem(_LeastSquares):
    """Step 2 in internal coordinates theta, with its free parameters, bounds and model (at the losses L)."""

    def __init__(self, kind: str, L: np.ndarray, acc: np.ndarray, chance: float | None, ceiling: float | None):
        if kind not in LINKS:
            raise DownstreamError(f"unknown link {kind!r}; choose one of {', '.join(LINKS)}")
        self.kind, self.L, self.acc = kind, np.asarray(L, np.float64), np.asarray(acc, np.float64)
        self.x, self.y = self.L, self.acc
        self.chance, self.ceiling = chance, ceiling
        # Centre the loss so the exponential's log-coefficient and gamma are not collinear.
        self.Lc = float(np.median(self.L))
        if kind == "sigmoid":
            # theta = (log k, L0, [chance], [ceiling])
            self.names = ["log_k", "L0"] + (["chance"] if chance is None else []) + (["ceiling"] if ceiling is None else [])
            amax, amin = float(acc.max()), float(acc.min())
            self.lo = np.array([-8.0, -np.inf] + ([0.0] if chance is None else []) + ([amax] if ceiling is None else []))
            self.hi = np.array([8.0, np.inf] + ([amin] if chance is None else []) + ([1.0] if ceiling is None else []))
        else:
            # theta = (floor = 1 - eps, a = log k - gamma * Lc, log gamma)
            self.names = ["floor", "a", "log_gamma"]
            self.lo = np.array([0.0, -50.0, -8.0])
            self.hi = np.array([1.0, 50.0, 4.0])
        self.P = len(self.names)

    def unpack(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        t = {n: theta[:, i:i + 1] for i, n in enumerate(self.names)}
        if self.kind == "sigmoid":
            return {"k": np.exp(t["log_k"]), "L0": t["L0"],
                    "chance": t.get("chance", np.full_like(t["L0"], self.chance if self.chance is not None else 0.0)),
                    "ceiling": t.get("ceiling", np.full_like(t["L0"], self.ceiling if self.ceiling is not None else 1.0))}
        gamma = np.exp(t["log_gamma"])
        return {"eps": 1.0 - t["floor"], "k": np.exp(t["a"] + gamma * self.Lc), "gamma": gamma}

    def natural(self, theta: np.ndarray) -> dict[str, float]:
        return {k: float(v[0, 0]) for k, v in self.unpack(theta[None, :]).items()}

    def value(self, theta: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (K, n) and d pred / d theta (K, n, P) at losses L (n,) or (K, n)."""
        t = {n: theta[:, i:i + 1] for i, n in enumerate(self.names)}
        if self.kind == "sigmoid":
            p = self.unpack(theta)
            k, L0, c, h = p["k"], p["L0"], p["chance"], p["ceiling"]
            s = 1.0 / (1.0 + np.exp(np.clip(k * (L - L0), -700, 700)))  # decreasing in L
            pred = c + (h - c) * s
            ds = -s * (1 - s)  # d s / d(k (L - L0))
            cols = [(h - c) * ds * k * (L - L0), (h - c) * ds * (-k)]
            if "chance" in t:
                cols.append(1.0 - s)
            if "ceiling" in t:
                cols.append(s)
        else:
            floor, a, lg = t["floor"], t["a"], t["log_gamma"]
            gamma = np.exp(lg)
            e = np.exp(np.clip(a - gamma * (L - self.Lc), -700, 700))
            pred = floor + e
            cols = [np.ones_like(e), e, -e * gamma * (L - self.Lc)]
        return pred, _jacobian(pred.shape, cols)

    def slope(self, theta: np.ndarray, L: np.ndarray) -> np.ndarray:
        """d accuracy / d loss at losses L (n,) for one theta (P,)."""
        if self.kind == "sigmoid":
            p = {k: float(v[0, 0]) for k, v in self.unpack(theta[None, :]).items()}
            s = 1.0 / (1.0 + np.exp(np.clip(p["k"] * (L - p["L0"]), -700, 700)))
            return -(p["ceiling"] - p["chance"]) * p["k"] * s * (1 - s)
        gamma = math.exp(theta[2])
        return -gamma * np.exp(np.clip(theta[1] - gamma * (L - self.Lc), -700, 700))

    def starts(self) -> np.ndarray:
        L, acc = self.L, self.acc
        q = np.quantile(L, [0.1, 0.3, 0.5, 0.7, 0.9])
        spread = max(float(np.std(L)), 1e-3)
        rows = []
        if self.kind == "sigmoid":
            for L0 in q:
                for k in (0.5 / spread, 2.0 / spread, 8.0 / spread):
                    row = [math.log(k), L0]
                    if self.chance is None:
                        row.append(float(acc.min()))
                    if self.ceiling is None:
                        row.append(min(1.0, float(acc.max()) + 0.5 * (1.0 - float(acc.max()))))
                    rows.append(row)
        else:
            lo = float(np.quantile(acc, 0.05))
            for floor in (0.0, 0.5 * lo, lo):
                for g in (0.3 / spread, 1.0 / spread, 3.0 / spread):
                    top = max(float(np.quantile(acc, 0.5)) - floor, 1e-3)
                    rows.append([floor, math.log(top), math.log(g)])
        return np.clip(np.array(rows, dtype=np.float64), self.lo, self.hi)


# --------------------------------------------------------------------------------------------
# Step 1: loss from scale (Chinchilla in N, D; a power law in C), and the latent composite.
# --------------------------------------------------------------------------------------------

class _ComputeLaw(_LeastSquares):
    """L(C) = E + A/C^alpha, least squares in log L, theta = (E, a, alpha) with A/C^alpha = exp(a - alpha u)."""

    names = ("E", "A", "alpha")
    P = 3

    def __init__(self, C: np.ndarray, L: np.ndarray):
        self.logC0 = float(np.mean(np.log(C)))
        self.u = np.log(C) - self.logC0
        self.y = np.log(L)
        self.x = self.u
        self.lo = np.array([0.0, -50.0, 0.005])
        self.hi = np.array([float(L.min()), 50.0, 3.0])

    def value(self, theta: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        E, a, al = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        t = np.exp(a - al * u)
        pred = E + t
        J = np.stack([np.ones_like(t), t, -u * t], axis=-1) / pred[..., None]
        return np.log(np.maximum(pred, _TINY)), J

    def starts(self) -> np.ndarray:
        return np.array([[e * self.hi[0], math.log(max(float(np.exp(self.y).mean()) * (1 - e), 1e-6)), al]
                         for e in (0.0, 0.5, 0.9) for al in (0.05, 0.2, 0.6)])

    def natural(self, theta: np.ndarray) -> dict[str, float]:
        E, a, al = (float(x) for x in theta)
        return {"E": E, "A": math.exp(a + al * self.logC0), "alpha": al}

    def predict(self, theta: np.ndarray, C: np.ndarray) -> np.ndarray:
        """Loss for every replicate row of theta (K, 3) at compute C (n,): shape (K, n)."""
        u = np.log(np.asarray(C, np.float64)) - self.logC0
        return np.exp(self.value(np.atleast_2d(theta), u)[0])


class _Latent(_LeastSquares):
    """acc = link(z), z = exp(a - alpha u) + exp(b - beta v) [+ no D term in compute mode].

    For the sigmoid, k (L - L0) = z - c0: theta = (a, b, alpha, beta, c0, [chance], [ceiling]).
    For the exponential, k exp(-gamma L) = exp(c0 - z): theta = (a, b, alpha, beta, c0, floor).
    """

    def __init__(self, kind: str, X: list[np.ndarray], acc: np.ndarray, chance, ceiling):
        if kind not in LINKS:
            raise DownstreamError(f"unknown link {kind!r}; choose one of {', '.join(LINKS)}")
        self.kind, self.acc, self.chance, self.ceiling = kind, acc, chance, ceiling
        self.centres = [float(np.mean(np.log(x))) for x in X]
        self.U = [np.log(x) - c for x, c in zip(X, self.centres)]
        self.x, self.y = self.U, self.acc
        self.m = len(X)  # 2 for (N, D), 1 for C
        self.names = [f"a{i}" for i in range(self.m)] + [f"e{i}" for i in range(self.m)] + ["c0"]
        lo = [-30.0] * self.m + [0.005] * self.m + [-50.0]
        hi = [30.0] * self.m + [3.0] * self.m + [50.0]
        if kind == "sigmoid":
            if chance is None:
                self.names.append("chance"); lo.append(0.0); hi.append(float(acc.min()))
            if ceiling is None:
                self.names.append("ceiling"); lo.append(float(acc.max())); hi.append(1.0)
        else:
            self.names.append("floor"); lo.append(0.0); hi.append(1.0)
        self.lo, self.hi, self.P = np.array(lo), np.array(hi), len(self.names)

    def _z(self, theta, U):
        terms = [np.exp(np.clip(theta[:, i:i + 1] - theta[:, self.m + i:self.m + i + 1] * U[i], -700, 700))
                 for i in range(self.m)]
        return terms

    def value(self, theta: np.ndarray, U: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        t = {n: theta[:, i:i + 1] for i, n in enumerate(self.names)}
        terms = self._z(theta, U)
        z = sum(terms)
        c0 = t["c0"]
        if self.kind == "sigmoid":
            c = t.get("chance", np.full_like(c0, self.chance if self.chance is not None else 0.0))
            h = t.get("ceiling", np.full_like(c0, self.ceiling if self.ceiling is not None else 1.0))
            s = 1.0 / (1.0 + np.exp(np.clip(z - c0, -700, 700)))
            pred = c + (h - c) * s
            dz = -(h - c) * s * (1 - s)  # d pred / d z
            cols = [dz * tm for tm in terms] + [-dz * tm * u for tm, u in zip(terms, U)] + [-dz * np.ones_like(z)]
            if "chance" in t:
                cols.append(1.0 - s)
            if "ceiling" in t:
                cols.append(s)
        else:
            e = np.exp(np.clip(c0 - z, -700, 700))
            pred = t["floor"] + e
            dz = -e
            cols = [dz * tm for tm in terms] + [-dz * tm * u for tm, u in zip(terms, U)] + [e, np.ones_like(e)]
        return pred, _jacobian(pred.shape, cols)

    def starts(self) -> np.ndarray:
        rows = []
        exps = (0.1, 0.3, 0.8)
        grid = [(x,) for x in exps] if self.m == 1 else [(x, y) for x in exps for y in exps]
        for es in grid:
            for c0 in (-1.0, 0.5, 2.0):
                row = [0.0] * self.m + list(es) + [c0]
                if self.kind == "sigmoid":
                    if self.chance is None:
                        row.append(float(self.acc.min()))
                    if self.ceiling is None:
                        row.append(min(1.0, float(self.acc.max()) + 0.5 * (1 - float(self.acc.max()))))
                else:
                    row.append(float(np.quantile(self.acc, 0.05)))
                rows.append(row)
        return np.clip(np.array(rows), self.lo, self.hi)

    def predict(self, theta: np.ndarray, X: list[np.ndarray]) -> np.ndarray:
        U = [np.log(np.asarray(x, np.float64)) - c for x, c in zip(X, self.centres)]
        return self.value(np.atleast_2d(theta), U)[0]

    def natural(self, theta: np.ndarray) -> dict[str, float]:
        t = {n: float(v) for n, v in zip(self.names, theta)}
        keys = ("N", "D") if self.m == 2 else ("C",)
        out = {}
        for i, key in enumerate(keys):
            e = t[f"e{i}"]
            out[f"A_{key}"] = math.exp(t[f"a{i}"] + e * self.centres[i])
            out[f"alpha_{key}"] = e
        out["c0"] = t["c0"]
        for extra in ("chance", "ceiling", "floor"):
            if extra in t:
                out[extra] = t[extra]
        if self.kind == "sigmoid":
            out.setdefault("chance", self.chance if self.chance is not None else 0.0)
            out.setdefault("ceiling", self.ceiling if self.ceiling is not None else 1.0)
        else:
            out["eps"] = 1.0 - out.pop("floor")
        return out


def _checkpoint_weights(kind: str, N: np.ndarray | None, D: np.ndarray | None) -> np.ndarray | float:
    """Per-row weights of :data:`CHECKPOINT_WEIGHTS` (1.0 for ``uniform``).

    >>> _checkpoint_weights("tokens", np.array([1e7, 1e7, 1e8, 1e8]), np.array([1e9, 4e9, 2e9, 4e9])).tolist()
    [0.25, 1.0, 0.5, 1.0]
    """
    if kind not in CHECKPOINT_WEIGHTS:
        raise DownstreamError(f"unknown checkpoint_weights {kind!r}; choose one of {', '.join(CHECKPOINT_WEIGHTS)}")
    if kind == "uniform":
        return 1.0
    if N is None or D is None:
        raise DownstreamError("checkpoint_weights='tokens' needs N and D (not compute C alone)")
    g = size_groups(N)
    top = np.zeros(g.max() + 1)
    np.maximum.at(top, g, D)
    return D / top[g]


def _stderr(acc: np.ndarray, acc_stderr) -> np.ndarray:
    """Standard error of each accuracy: the given one (floored at 0.001), else binomial for ~1,000 items."""
    if acc_stderr is None:
        return np.sqrt(np.maximum(acc * (1 - acc), 0.01) / 1000.0)
    return np.maximum(np.asarray(acc_stderr, np.float64), 1e-3)


def _saturated(N: np.ndarray, D: np.ndarray, acc: np.ndarray, se: np.ndarray,
               sigma: float = SATURATION_SIGMA) -> tuple[np.ndarray, str]:
    """Rows to keep: not more than ``sigma`` standard errors below their size's best accuracy at a
    smaller or equal D; and a warning naming the sizes that lost rows ("" when none did).

    >>> N = np.full(4, 1e7); D = np.array([1e9, 2e9, 4e9, 8e9])
    >>> keep, note = _saturated(N, D, np.array([0.30, 0.40, 0.30, 0.41]), np.full(4, 0.01))
    >>> keep.tolist(), note.split(":")[0]
    ([True, True, False, True], '1 row(s) of 1 model size(s) (N 1e+07) fell more than 3 standard errors below an earlier accuracy of their size')
    """
    keep = np.ones(len(acc), bool)
    groups = size_groups(N)
    hit = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        idx = idx[np.argsort(D[idx], kind="stable")]
        best = np.maximum.accumulate(acc[idx])
        drop = acc[idx] < best - sigma * se[idx]
        if drop.any():
            keep[idx[drop]] = False
            hit.append(float(N[idx[0]]))
    if not hit:
        return keep, ""
    sizes = ", ".join(f"{x:.3g}" for x in hit)
    return keep, (f"{int((~keep).sum())} row(s) of {len(hit)} model size(s) (N {sizes}) fell more than {sigma:g} "
                  "standard errors below an earlier accuracy of their size: left out of the latent fit (it has "
                  "accuracy rising with D; small models saturate late in training)")


def _loss_block(p1: varpro.Problem, theta1: np.ndarray, groups: np.ndarray) -> Block:
    """Step 1 (Chinchilla, Huber on log residuals) linearised at its fit for the CR2 intervals, as the Huber
    M-estimator it is (:meth:`.cr2.Block.huber`)."""
    E, a, b, al, be = theta1
    t1, t2 = np.exp(a - al * p1.u), np.exp(b - be * p1.v)
    pred = E + t1 + t2
    r = p1.log_loss - np.log(np.maximum(pred, _TINY))
    J = np.stack([np.ones_like(t1), t1, t2, -p1.u * t1, -p1.v * t2], axis=1) / pred[:, None]
    return Block.huber(J, r, groups, p1.delta)


def _acc_block(J: np.ndarray, acc: np.ndarray, fitted: np.ndarray, groups: np.ndarray, w: np.ndarray) -> Block:
    """The accuracy fit linearised for the CR2 intervals; working variance binomial-shaped, p (1 - p)."""
    p = np.clip(fitted, 0.01, 0.99)
    return Block.weighted(J, acc - fitted, groups, w, p * (1 - p))


def _huber_delta(theta: np.ndarray, p: varpro.Problem) -> float:
    """1.345 x the robust (MAD) scale of the log residuals at theta."""
    E, a, b, al, be = theta
    pred = E + np.exp(a - al * p.u) + np.exp(b - be * p.v)
    r = np.log(np.maximum(pred, _TINY)) - p.log_loss
    return float(1.345 * 1.4826 * np.median(np.abs(r - np.median(r))))


# --------------------------------------------------------------------------------------------
# The fit.
# --------------------------------------------------------------------------------------------

@dataclass
class DownstreamFit:
    """A fitted downstream law: ``predict`` gives accuracy with bootstrap intervals."""

    law: str
    link: str
    mode: str  # "two-step" (measured loss), "latent" (no loss measured)
    scale: str  # "N,D" or "C"
    result: FitResult
    level: float
    # (N, D, C, loss) -> acc, bootstrap replicates of acc, loss, its replicates, and the linearised
    # fit's (CR2 blocks, gradients) of acc and of loss (None where not computed)
    _predict_samples: Callable[..., tuple] = field(repr=False)
    max_N: float | None = None
    min_loss: float | None = None
    residuals: np.ndarray | None = field(default=None, repr=False)  # acc - fitted, rows of the accuracy fit
    seed: int = 0

    @property
    def params(self) -> dict[str, float]:
        """Point-estimate parameters (step 1 prefixed ``loss.``, step 2 ``acc.``)."""
        return self.result.params

    @property
    def warnings(self) -> list[str]:
        """Signal, monotonicity and identifiability warnings."""
        return self.result.warnings

    def to_json(self) -> dict:
        """The FitResult's JSON document."""
        return self.result.to_json()

    def predict(self, N=None, D=None, *, C=None, loss=None, level: float | None = None) -> dict[str, Any]:
        """Predicted accuracy (and the step-1 loss) with central intervals at ``level``.

        Give (N, D) — or C in compute mode. With ``loss`` (two-step fits only) step 2 is applied
        to that loss and step 1 is skipped. Returns arrays ``acc``, ``low``, ``high``, ``loss``
        (the loss used; NaN in latent mode), ``loss_low``/``loss_high``, and ``pred_low``/``pred_high``:
        the interval for a *measured* accuracy (the law's uncertainty plus the fit's residual scatter).
        Intervals: resampling rows, the bootstrap's percentiles; resampling whole model sizes
        (``cluster=True``), the CR2 cluster-robust standard error of the linearised fit with the
        exact critical value of its t statistic under the working model (:mod:`.cr2`: the cluster
        bootstrap's percentiles under-cover with few sizes, the leave-one-size-out jackknife errs).
        """
        level = self.level if level is None else level
        acc, acc_s, L, L_s, acc_lin, L_lin = self._predict_samples(N=N, D=D, C=C, loss=loss)
        # Accuracies live in [0, 1]; the exponential link is not bounded above by itself.
        acc = np.clip(acc, 0.0, 1.0)
        acc_s = None if acc_s is None else np.clip(acc_s, 0.0, 1.0)
        out = {"acc": acc, "loss": L}
        for key, est, s, lin in (("", acc, acc_s, acc_lin), ("loss_", L, L_s, L_lin)):
            if lin is not None:
                iv = cr2_interval(est, *lin, level=level, seed=self.seed)
                lo, hi = iv["low"], iv["high"]
                out[key + "low"], out[key + "high"] = (np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)) if not key else (lo, hi)
            elif s is None or len(s) < 2:
                out[key + "low"] = np.full_like(est, np.nan)
                out[key + "high"] = np.full_like(est, np.nan)
            else:
                q = np.nanquantile(s, [(1 - level) / 2, (1 + level) / 2], axis=0)
                out[key + "low"], out[key + "high"] = q[0], q[1]
        have_resid = self.residuals is not None and len(self.residuals) > 1
        if acc_lin is not None and have_resid:
            # The law's half-width and the residuals' (a single evaluation's scatter around the law:
            # benchmark noise, run quirks) added in quadrature, side by side: independent errors.
            r_lo, r_hi = np.quantile(self.residuals, [(1 - level) / 2, (1 + level) / 2])
            out["pred_low"] = np.clip(acc - np.hypot(acc - out["low"], min(r_lo, 0.0)), 0.0, 1.0)
            out["pred_high"] = np.clip(acc + np.hypot(out["high"] - acc, max(r_hi, 0.0)), 0.0, 1.0)
        elif acc_s is not None and len(acc_s) >= 2 and have_resid:
            # Each bootstrap replicate plus a residual of the fit drawn at random.
            rng = np.random.default_rng(self.seed + 7919)
            noisy = np.clip(acc_s + rng.choice(self.residuals, size=acc_s.shape), 0.0, 1.0)
            q = np.nanquantile(noisy, [(1 - level) / 2, (1 + level) / 2], axis=0)
            out["pred_low"], out["pred_high"] = q[0], q[1]
        else:
            out["pred_low"] = np.full_like(acc, np.nan)
            out["pred_high"] = np.full_like(acc, np.nan)
        return out

    def prediction_warnings(self, N=None) -> list[str]:
        """Warnings about extrapolating to these sizes (far beyond the largest fitted N)."""
        out = []
        if N is not None and self.max_N:
            ratio = float(np.max(np.asarray(N, np.float64))) / self.max_N
            if ratio > FAR_EXTRAPOLATION:
                out.append(f"predicting at {ratio:.0f}x the largest fitted N: beyond ~{FAR_EXTRAPOLATION:.0f}x "
                           "the backtests say little about the error (errors of 3-10 points at 14-37x on Pythia "
                           "before the robust defaults)")
        return out


def _column(x, name: str) -> np.ndarray | None:
    if x is None:
        return None
    a = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if a.ndim != 1:
        raise DownstreamError(f"column {name}: expected one value per row, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        raise DownstreamError(f"column {name}: {int(bad.sum())} NaN/inf value(s) (first at row {int(np.argmax(bad))})")
    return a


def validate(N, D, C, acc, loss, chance, ceiling) -> dict[str, Any]:
    """Check the columns of a downstream fit; DownstreamError names the first problem.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # planted loss law
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))  # planted sigmoid link, chance 0.25
    >>> cols = validate(N, D, None, acc, L, 0.25, 1.0)
    >>> cols["n"], cols["chance"]
    (16, 0.25)
    >>> validate(N, D, None, acc * 100, L, 0.25, 1.0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    orchestrator.core.laws.downstream.DownstreamError: column acc: 16 value(s) outside [0, 1], ... divide by 100)
    """
    acc = _column(acc, "acc")
    if acc is None:
        raise DownstreamError("missing column acc")
    cols = {"N": _column(N, "N"), "D": _column(D, "D"), "C": _column(C, "C"), "loss": _column(loss, "loss")}
    n = len(acc)
    for name, col in cols.items():
        if col is not None and len(col) != n:
            raise DownstreamError(f"column {name} has {len(col)} rows, acc has {n}")
        if col is not None and np.any(col <= 0):
            bad = col <= 0
            raise DownstreamError(f"column {name}: {int(bad.sum())} non-positive value(s) (first at row {int(np.argmax(bad))})")
    if cols["N"] is None or cols["D"] is None:
        if cols["C"] is None:
            raise DownstreamError("need columns N and D, or C (compute)")
        cols["N"] = cols["D"] = None
    out = (acc < 0) | (acc > 1)
    if out.any():
        i = int(np.argmax(out))
        hint = " (percentages? divide by 100)" if acc.max() <= 100 and acc.max() > 1 else ""
        raise DownstreamError(f"column acc: {int(out.sum())} value(s) outside [0, 1], first {acc[i]:g} at row {i}{hint}")
    if chance is not None:
        ch = np.atleast_1d(np.asarray(chance, dtype=np.float64))
        if not np.all(np.isfinite(ch)) or np.any((ch < 0) | (ch > 1)):
            raise DownstreamError(f"chance must be in [0, 1], got {ch[~((ch >= 0) & (ch <= 1))][0] if ch.size else chance}")
        if np.ptp(ch) > 1e-9:
            raise DownstreamError(f"chance varies between rows ({ch.min():g} .. {ch.max():g}): fit one task at a time")
        chance = float(ch[0])
    if ceiling is not None:
        ceiling = float(ceiling)
        if not (0.0 < ceiling <= 1.0):
            raise DownstreamError(f"ceiling must be in (0, 1], got {ceiling:g}")
    if chance is not None and ceiling is not None and chance >= ceiling:
        raise DownstreamError(f"chance {chance:g} is not below the ceiling {ceiling:g}")
    if ceiling is not None and acc.max() > ceiling + 1e-12:
        raise DownstreamError(f"column acc: {acc.max():g} at row {int(np.argmax(acc))} is above the ceiling {ceiling:g}")
    return {"acc": acc, **cols, "chance": chance, "ceiling": ceiling, "n": n}


def fit_downstream(
    N=None, D=None, acc=None, *,
    loss=None,
    C=None,
    chance: float | None = None,
    ceiling: float | None = 1.0,
    link: str = "sigmoid",
    loss_rows=None,
    bootstrap: int = 0,
    cluster: bool = False,
    seed: int = 0,
    level: float = 0.9,
    acc_stderr=None,
    weights=None,
    checkpoint_weights: str = "auto",
    saturation_sigma: float | None = None,
) -> DownstreamFit:
    """Fit a downstream law (see the module docstring) and its bootstrap.

    ``loss``: the measured loss of each row (task loss or a shared validation loss); without it
    the latent composite is fitted. ``loss_rows``: boolean mask of the rows the loss law may use
    (e.g. not warm-up checkpoints, which no L(N, D) law describes): in a two-step fit step 2 still
    uses every row; in a latent fit the other rows are left out.
    ``chance``/``ceiling``: the sigmoid's floor and top, fitted when None (the exponential fits
    its own floor). ``acc_stderr`` only feeds the near-chance warning (default: binomial guess).
    ``checkpoint_weights``: ``uniform``, or ``tokens``: each row of the accuracy fit weighted by
    its D over the largest D of its model size (with ``weights`` multiplied in), so a run's
    final, fully trained rows count most (see :data:`CHECKPOINT_WEIGHTS`); ``auto`` (default):
    ``tokens`` for a latent fit in (N, D), else ``uniform``.
    ``saturation_sigma`` (latent fits in (N, D); default :data:`SATURATION_SIGMA`, 0 or a negative
    value: off): rows more than this many standard errors (``acc_stderr``, else a binomial guess)
    below the best accuracy of their model size at a smaller D leave the fit, with a warning —
    the latent law has accuracy rising with D, and small models that lose accuracy late in
    training (saturation) would otherwise steepen the fitted trend in N.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # planted loss law
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))  # planted sigmoid link, chance 0.25
    >>> fit = fit_downstream(N, D, acc, loss=L, chance=0.25)
    >>> {k: round(v, 3) for k, v in fit.params.items() if k.startswith("acc.")}
    {'acc.k': 3.0, 'acc.L0': 2.6, 'acc.chance': 0.25, 'acc.ceiling': 1.0}
    >>> round(float(fit.predict([1e9], [1e11])["acc"][0]), 3)  # a larger model, more tokens
    0.744
    """
    v = validate(N, D, C, acc, loss, chance, ceiling)
    acc, N, D, C, loss, chance, ceiling, n = (v[k] for k in ("acc", "N", "D", "C", "loss", "chance", "ceiling", "n"))
    if link not in LINKS:
        raise DownstreamError(f"unknown link {link!r}; choose one of {', '.join(LINKS)}")
    scale = "N,D" if N is not None else "C"
    mode = "two-step" if loss is not None else "latent"
    n_total = n
    if mode == "latent" and loss_rows is not None:
        # The latent loss is step 1 itself: rows it may not describe leave the fit altogether.
        keep = np.asarray(loss_rows, bool)
        if keep.shape != (n,):
            raise DownstreamError(f"loss_rows has shape {keep.shape}, expected ({n},)")
        pick = lambda x: None if x is None else np.asarray(x, np.float64)[keep]  # noqa: E731
        acc, N, D, C, acc_stderr, weights = (pick(x) for x in (acc, N, D, C, acc_stderr, weights))
        n = int(keep.sum())
        loss_rows = None
    warnings: list[str] = []
    sigma = SATURATION_SIGMA if saturation_sigma is None else float(saturation_sigma)
    sigma = sigma if (mode == "latent" and scale == "N,D" and sigma > 0) else 0.0  # the rule's scope; 0: off
    n_saturated = 0
    if sigma > 0:
        keep, note = _saturated(N, D, acc, _stderr(acc, acc_stderr), sigma)
        n_saturated = int((~keep).sum())
        if note:
            warnings.append(note)
            pick = lambda x: None if x is None else np.asarray(x, np.float64)[keep]  # noqa: E731
            acc, N, D, acc_stderr, weights = (pick(x) for x in (acc, N, D, acc_stderr, weights))
            n = int(keep.sum())
    if checkpoint_weights == "auto":
        checkpoint_weights = "tokens" if (mode == "latent" and scale == "N,D") else "uniform"
    groups = size_groups(N if N is not None else C) if cluster else None
    rng = np.random.default_rng(seed)
    W = resample_weights(n, int(bootstrap), rng, groups) if bootstrap and bootstrap > 0 else None
    # Resampling whole sizes: the prediction intervals come from the CR2 cluster-robust variance of the
    # linearised fit (see DownstreamFit.predict); the bootstrap still gives the parameters' intervals.
    robust = W is not None and groups is not None and groups.max() >= 1
    ones = np.ones(n)
    w_acc = ones if weights is None else np.asarray(weights, np.float64)  # per-row weights of the accuracy fit
    if w_acc.shape != (n,) or np.any(~np.isfinite(w_acc)) or np.any(w_acc < 0):
        raise DownstreamError(f"weights must be {n} finite non-negative numbers")
    w_acc = w_acc * _checkpoint_weights(checkpoint_weights, N, D)
    params: dict[str, float] = {}
    intervals: dict[str, Any] = {}

    if mode == "two-step":
        mask = np.ones(n, bool) if loss_rows is None else np.asarray(loss_rows, bool)
        if mask.shape != (n,):
            raise DownstreamError(f"loss_rows has shape {mask.shape}, expected ({n},)")
        n_step1 = int(mask.sum())
        need1 = 5 if scale == "N,D" else 3
        if n_step1 < need1 + 1:
            raise DownstreamError(f"{n_step1} row(s) for the loss law: it has {need1} parameters, need at least {need1 + 1}")
        lp = _LinkProblem(link, loss, acc, chance if link == "sigmoid" else None, ceiling if link == "sigmoid" else None)
        if n < lp.P + 2:
            raise DownstreamError(f"{n} row(s): the {link} link has {lp.P} free parameters, need at least {lp.P + 2}")
        # step 1
        if scale == "N,D":
            with varpro.single_threaded_blas():
                p1 = varpro.Problem.build(N[mask], D[mask], loss[mask])
                theta1, _ = varpro.global_fit(p1)
                # Huber's delta in units of the residual scale (1.345 robust sigmas, Huber's 95 %-efficiency
                # constant): the Chinchilla default 1e-3 makes a noisier task loss an L1 fit, whose
                # bootstrap is slow to converge and conservative.
                delta = _huber_delta(theta1, p1)
                if delta > p1.delta:
                    p1 = varpro.Problem.build(N[mask], D[mask], loss[mask], delta=delta)
                    theta1, _ = varpro.global_fit(p1, extra_starts=[theta1])
                th1_s = varpro.batch_polish(theta1, p1, W[:, mask], rtol=1e-10)[0] if W is not None else None
            b1 = _loss_block(p1, theta1, groups[mask]) if robust else None
            step1 = varpro.to_natural(theta1, p1)
            step1_s = None if th1_s is None else [varpro.to_natural(t, p1) for t in th1_s]
            extra_fit = {"loss_huber_delta": p1.delta}

            def loss_at(th, Nq, Dq):
                th = np.atleast_2d(th)
                E, a, b, al, be = (th[:, i:i + 1] for i in range(5))
                return E + np.exp(a - al * (np.log(Nq) - p1.logN0)) + np.exp(b - be * (np.log(Dq) - p1.logD0))

            def loss_grad(Nq, Dq):  # d loss / d theta1, (m, 5)
                E, a, b, al, be = theta1
                u, v = np.log(Nq) - p1.logN0, np.log(Dq) - p1.logD0
                t1, t2 = np.exp(a - al * u), np.exp(b - be * v)
                return np.stack([np.ones_like(t1), t1, t2, -u * t1, -v * t2], axis=1)
        else:
            law1 = _ComputeLaw(C[mask], loss[mask])
            theta1 = law1.fit(ones[mask])
            th1_s = law1.batch(theta1, W[:, mask]) if W is not None else None
            if robust:
                logL, J1 = law1.value(theta1[None, :], law1.u)
                b1 = Block.weighted(J1[0], law1.y - logL[0], groups[mask])
            else:
                b1 = None
            step1 = law1.natural(theta1)
            step1_s = None if th1_s is None else [law1.natural(t) for t in th1_s]
            extra_fit = {}

            def loss_at(th, Cq, _unused=None):
                return law1.predict(th, Cq)

            def loss_grad(Cq, _unused=None):  # d loss / d theta1, (m, 3); value's Jacobian is of log loss
                logL, J = law1.value(theta1[None, :], np.log(Cq) - law1.logC0)
                return np.exp(logL[0])[:, None] * J[0]
        # step 2
        theta2 = lp.fit(w_acc)
        th2_s = lp.batch(theta2, W * w_acc) if W is not None else None
        step2 = lp.natural(theta2)
        params.update({f"loss.{k}": v_ for k, v_ in step1.items()})
        params.update({f"acc.{k}": v_ for k, v_ in step2.items()})
        fitted, J2 = lp.value(theta2[None, :], loss)
        fitted = fitted[0]
        resid = acc - fitted
        b2 = _acc_block(J2[0], acc, fitted, groups, w_acc) if robust else None
        if th2_s is not None:
            for prefix, est, reps in (("loss", step1, step1_s), ("acc", step2, [lp.natural(t) for t in th2_s])):
                for key in est:
                    q = np.nanquantile(np.array([d[key] for d in reps]), [(1 - level) / 2, (1 + level) / 2])
                    intervals[f"{prefix}.{key}"] = {"estimate": est[key], "low": float(q[0]), "high": float(q[1]),
                                                    "level": level}
        warnings += _signal_warnings(acc, chance if chance is not None else float(np.quantile(acc, 0.02)), ceiling or 1.0,
                                     acc_stderr)
        warnings += _monotone_warnings(loss, acc, chance)
        if scale == "N,D":
            from .diagnostics import identifiability_warnings

            warnings += [f"loss law: {w}" for w in identifiability_warnings(N[mask], D[mask], p1, theta1, None)]

        def predict_samples(N=None, D=None, C=None, loss=None):
            if loss is not None:
                Lq = np.atleast_1d(np.asarray(loss, np.float64))
                L_s = dL = None
            else:
                X = (np.atleast_1d(np.asarray(N, np.float64)), np.atleast_1d(np.asarray(D, np.float64))) \
                    if scale == "N,D" else (np.atleast_1d(np.asarray(C, np.float64)), None)
                if X[0] is None or (scale == "N,D" and X[1] is None):
                    raise DownstreamError("predict needs N and D" if scale == "N,D" else "predict needs C")
                Lq = loss_at(theta1, *X)[0]
                L_s = loss_at(th1_s, *X) if th1_s is not None else None
                dL = loss_grad(*X) if robust else None
            accq, J2q = lp.value(theta2[None, :], Lq)
            accq = accq[0]
            acc_s = None
            if th2_s is not None:
                acc_s = lp.value(th2_s, L_s if L_s is not None else Lq[None, :])[0]
            if not robust:
                return accq, acc_s, Lq, L_s, None, None
            if dL is None:  # the loss is given: only step 2 is uncertain
                return accq, acc_s, Lq, L_s, ([b2], [J2q[0]]), None
            return (accq, acc_s, Lq, L_s, ([b1, b2], [lp.slope(theta2, Lq)[:, None] * dL, J2q[0]]),
                    ([b1], [dL]))
        min_loss = float(loss.min())
    else:
        X = [N, D] if scale == "N,D" else [C]
        lat = _Latent(link, X, acc, chance if link == "sigmoid" else None, ceiling if link == "sigmoid" else None)
        if n < lat.P + 2:
            raise DownstreamError(f"{n} row(s): the latent {link} law has {lat.P} parameters, need at least {lat.P + 2}")
        theta = lat.fit(w_acc)
        th_s = lat.batch(theta, W * w_acc) if W is not None else None
        nat = lat.natural(theta)
        params.update({f"latent.{k}": v_ for k, v_ in nat.items()})
        fitted, J = lat.value(theta[None, :], lat.U)
        fitted = fitted[0]
        resid = acc - fitted
        b = _acc_block(J[0], acc, fitted, groups, w_acc) if robust else None
        if th_s is not None:
            reps = [lat.natural(t) for t in th_s]
            for key in nat:
                s = np.array([d[key] for d in reps])
                q = np.nanquantile(s, [(1 - level) / 2, (1 + level) / 2])
                intervals[f"latent.{key}"] = {"estimate": nat[key], "low": float(q[0]), "high": float(q[1]), "level": level}
        warnings += _signal_warnings(acc, chance if chance is not None else float(np.quantile(acc, 0.02)), ceiling or 1.0,
                                     acc_stderr)
        # monotone in the fitted latent loss (z grows as N, D shrink)
        z = sum(lat._z(theta[None, :], lat.U))[0]
        warnings += _monotone_warnings(z, acc, chance, what="the fitted latent loss")
        if scale == "N,D":
            sizes = len(np.unique(size_groups(N)))
            if sizes < MIN_SIZES:
                warnings.append(f"only {sizes} model size(s): the trend in N rests on {sizes} point(s); with 3 sizes "
                                "(two of them saturating) Pythia's backtests missed LAMBADA by 2-8 points at 8-21x")

        def predict_samples(N=None, D=None, C=None, loss=None):
            if loss is not None:
                raise DownstreamError("this fit has no measured loss (latent mode): predict from N, D (or C)")
            Xq = [np.atleast_1d(np.asarray(N, np.float64)), np.atleast_1d(np.asarray(D, np.float64))] \
                if scale == "N,D" else [np.atleast_1d(np.asarray(C, np.float64))]
            accq, Jq = lat.value(theta[None, :], [np.log(x) - c for x, c in zip(Xq, lat.centres)])
            accq = accq[0]
            acc_s = lat.predict(th_s, Xq) if th_s is not None else None
            nan = np.full_like(accq, np.nan)
            return accq, acc_s, nan, None, ([b], [Jq[0]]) if robust else None, None
        min_loss = None
        extra_fit = {}

    if bootstrap and not cluster:
        _, per_size = np.unique(size_groups(N if N is not None else C), return_counts=True)
        if np.median(per_size) >= 5:
            warnings.append(f"{int(np.median(per_size))} rows per model size (median): if they are checkpoints of one "
                            "run they are not independent; resample whole sizes (cluster=True, --cluster) or the "
                            "intervals are too narrow")
    if link == "sigmoid" and chance is None:
        floor = params.get("acc.chance", params.get("latent.chance"))
        warnings.append(f"no chance level given: the floor was fitted ({floor:.3f}); give the task's chance "
                        "(1/choices, 0 for free completion): a fitted floor extrapolates worse")
    law_name = f"{mode}-{link}"
    result = FitResult(
        law=law_name,
        params=params,
        objective=float(np.sum(resid ** 2)),
        n_points=n,
        loss="least-squares (accuracy)",
        intervals=intervals,
        warnings=warnings,
        extra={"link": link, "mode": mode, "scale": scale, "chance": chance, "ceiling": ceiling,
               "rmse_acc": float(np.sqrt(np.mean(resid ** 2))), "bootstrap": int(bootstrap or 0),
               "cluster": bool(cluster), "seed": int(seed), "level": level,
               "prediction_intervals": ("CR2 cluster-robust, exact working-model t" if robust
                                        else "bootstrap percentile" if W is not None else "none"),
               "n_rows": n_total, "n_loss_rows": int(np.sum(loss_rows)) if loss_rows is not None else n,
               "checkpoint_weights": checkpoint_weights, "saturation_sigma": sigma, "n_saturated": n_saturated,
               **extra_fit},
    )
    return DownstreamFit(law_name, link, mode, scale, result, level, predict_samples,
                         max_N=float(N.max()) if N is not None else None, min_loss=min_loss,
                         residuals=np.asarray(resid, np.float64), seed=int(seed))


# --------------------------------------------------------------------------------------------
# Warnings.
# --------------------------------------------------------------------------------------------

def _signal_warnings(acc: np.ndarray, chance: float, ceiling: float, acc_stderr) -> list[str]:
    """Too few points clear of chance: the accuracy law is then unidentified."""
    se = _stderr(acc, acc_stderr)
    above = acc > chance + NEAR_CHANCE_SIGMA * se
    out = []
    share = float(np.mean(~above))
    signal = (float(acc.max()) - chance) / max(ceiling - chance, 1e-9)
    if signal < MIN_SIGNAL or above.sum() < 3:
        out.append(f"too little signal: the best accuracy {acc.max():.3f} is only {signal:.0%} of the way from "
                   f"chance {chance:.3f} to the ceiling {ceiling:.3f} ({int(above.sum())} point(s) clear of chance by "
                   f"{NEAR_CHANCE_SIGMA:g} standard errors); predictions are unreliable")
    elif share > 0.5:
        out.append(f"{share:.0%} of the points sit within {NEAR_CHANCE_SIGMA:g} standard errors of chance "
                   f"({chance:.3f}): they carry little signal about the shape of the curve")
    if acc.min() < chance - 3 * float(np.median(se)):
        out.append(f"some accuracies ({acc.min():.3f}) are below chance ({chance:.3f}): the task's chance level may be "
                   "wrong, or the metric rewards a bias of untrained models")
    return out


def _monotone_warnings(L: np.ndarray, acc: np.ndarray, chance, what: str = "the loss") -> list[str]:
    """Accuracy should fall as the loss grows; warn when it does not (Spearman rho)."""
    if len(L) < 4:
        return []
    rl = np.argsort(np.argsort(L)).astype(float)
    ra = np.argsort(np.argsort(acc)).astype(float)
    if np.std(ra) == 0 or np.std(rl) == 0:
        return [f"accuracy is constant: nothing to fit against {what}"]
    rho = float(np.corrcoef(rl, ra)[0, 1])
    if rho > MONOTONE_RHO:
        return [f"accuracy is not monotone in {what} (Spearman rho {rho:+.2f}, expected near -1): "
                "the link from loss to accuracy does not hold for these points"]
    return []


# --------------------------------------------------------------------------------------------
# Backtests.
# --------------------------------------------------------------------------------------------

def backtest(train: np.ndarray, test: np.ndarray, N=None, D=None, acc=None, *, C=None, loss=None,
             use_test_loss: bool = False, loss_rows=None, **kwargs) -> dict[str, Any]:
    """Fit on the ``train`` rows, predict the ``test`` rows; errors in accuracy points and coverage.

    ``use_test_loss``: predict step 2 from the test rows' measured loss (isolates the link's
    error); by default step 1 predicts their loss from (N, D) / C, as for an unseen model.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # planted loss law
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))  # planted sigmoid link, chance 0.25
    >>> r = backtest(N < 3e8, N >= 3e8, N, D, acc, loss=L, chance=0.25)  # fit three sizes, predict the fourth
    >>> r["n_train"], r["n_test"], r["max_abs_error_points"] < 1e-6
    (12, 4, True)
    """
    train, test = np.asarray(train, bool), np.asarray(test, bool)
    sel = lambda x, m: None if x is None else np.asarray(x, np.float64)[m]  # noqa: E731
    lr = None if loss_rows is None else np.asarray(loss_rows, bool)[train]
    for key in ("weights", "acc_stderr"):  # per-row arguments follow the training rows
        if kwargs.get(key) is not None:
            kwargs[key] = np.asarray(kwargs[key], np.float64)[train]
    fit = fit_downstream(sel(N, train), sel(D, train), sel(acc, train), C=sel(C, train), loss=sel(loss, train),
                         loss_rows=lr, **kwargs)
    pred = fit.predict(sel(N, test), sel(D, test), C=sel(C, test),
                       loss=sel(loss, test) if use_test_loss else None)
    obs = np.asarray(acc, np.float64)[test]
    err = pred["acc"] - obs
    cover = (pred["low"] <= obs) & (obs <= pred["high"])
    cover_pred = (pred["pred_low"] <= obs) & (obs <= pred["pred_high"])
    have_iv = np.isfinite(pred["low"])
    return {
        "law": fit.law, "n_train": int(train.sum()), "n_test": int(test.sum()),
        "mean_abs_error_points": float(np.mean(np.abs(err)) * 100),
        "max_abs_error_points": float(np.max(np.abs(err)) * 100),
        "bias_points": float(np.mean(err) * 100),
        "covered": int(cover[have_iv].sum()), "n_intervals": int(have_iv.sum()),
        "covered_prediction_interval": int(cover_pred[have_iv].sum()),
        "warnings": fit.warnings,
        "points": [{"N": None if N is None else float(n_), "D": None if D is None else float(d_),
                    "observed": float(o), "predicted": float(p), "low": float(lo), "high": float(hi),
                    "pred_low": float(plo), "pred_high": float(phi), "loss_predicted": float(lp_)}
                   for n_, d_, o, p, lo, hi, plo, phi, lp_ in zip(
                       sel(N, test) if N is not None else [None] * int(test.sum()),
                       sel(D, test) if D is not None else [None] * int(test.sum()),
                       obs, pred["acc"], pred["low"], pred["high"], pred["pred_low"], pred["pred_high"],
                       pred["loss"])],
    }


def backtest_by_size(N, D, acc, *, final_only: bool = True, **kwargs) -> dict[str, Any]:
    """Leave the largest model size out: fit the others, predict it (its largest-D row by default).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # planted loss law
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))  # planted sigmoid link, chance 0.25
    >>> r = backtest_by_size(N, D, acc, loss=L, chance=0.25)  # the largest model's final row held out
    >>> r["n_train"], r["n_test"], r["max_abs_error_points"] < 1e-6
    (12, 1, True)
    """
    N = np.asarray(N, np.float64)
    groups = size_groups(N)
    largest = groups == groups[np.argmax(N)]
    test = largest.copy()
    if final_only:
        Dv = np.asarray(D, np.float64)
        test = largest & (Dv >= Dv[largest].max() * (1 - 1e-9))
    if (~largest).sum() == 0:
        raise DownstreamError("only one model size: nothing to backtest")
    return backtest(~largest, test, N, D, acc, **kwargs)


def predictions_json(fit: DownstreamFit, N=None, D=None, *, C=None, loss=None) -> list[dict[str, Any]]:
    """Predictions as the CLI prints them: one dict per row, in order.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # planted loss law
    >>> acc = 0.25 + 0.75 / (1 + np.exp(3.0 * (L - 2.6)))  # planted sigmoid link, chance 0.25
    >>> rows = predictions_json(fit_downstream(N, D, acc, loss=L, chance=0.25), [1e9], [1e11])
    >>> sorted(rows[0]), round(rows[0]["acc"], 3), rows[0]["interval"]  # no bootstrap: no interval
    (['D', 'N', 'acc', 'interval', 'loss', 'loss_interval', 'prediction_interval'], 0.744, [None, None])
    """
    pred = fit.predict(N, D, C=C, loss=loss)
    n = len(pred["acc"])
    col = lambda x: [None] * n if x is None else list(np.broadcast_to(np.asarray(x, np.float64), (n,)))  # noqa: E731
    rows = []
    for i, (n_, d_, c_) in enumerate(zip(col(N), col(D), col(C))):
        row = {"N": n_, "D": d_}
        if C is not None:
            row["C"] = c_
        row.update({"acc": pred["acc"][i], "interval": [pred["low"][i], pred["high"][i]],
                    "prediction_interval": [pred["pred_low"][i], pred["pred_high"][i]],
                    "loss": pred["loss"][i], "loss_interval": [pred["loss_low"][i], pred["loss_high"][i]]})
        rows.append(row)
    return jsonable(rows)
