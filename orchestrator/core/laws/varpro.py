"""Global fit of L = E + A/N^alpha + B/D^beta by variable projection plus analytic-gradient polish.

For fixed exponents the law is linear in (E, A, B). We scan an (alpha, beta) grid, solve the
bounded linear part exactly for every cell at once (a 3-variable bounded least squares in relative
error, enumerated over its active faces), score every cell with the real robust objective, and
polish the best few distinct cells with L-BFGS-B on the summed robust loss with exact gradients.

Internally the parameters are ``theta = (E, a, b, alpha, beta)`` with the power terms centred at
the geometric means N0, D0 of the data: ``A/N^alpha = exp(a - alpha*log(N/N0))``. Centring removes
the near-perfect correlation between log A and alpha that makes the raw parametrisation badly
conditioned (log N ~ 20), so L-BFGS-B converges in a few dozen iterations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .objectives import DEFAULT_DELTA, get_loss

EXP_BOUNDS = (0.01, 2.0)  # physical range of alpha and beta
GRID_SIZE = 32  # cells per exponent axis in the global scan
N_POLISH = 4  # distinct grid minima polished with L-BFGS-B
_TINY = 1e-300


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread: these 5x5 problems only lose to thread start-up and contention.

    >>> with single_threaded_blas():
    ...     float(np.linalg.solve(np.eye(2), np.ones(2)).sum())
    2.0
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: without it the fit is the same, only slower on busy machines
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@dataclass(frozen=True)
class Problem:
    """Data of one fit in the centred log coordinates, with per-point weights (bootstrap counts)."""

    u: np.ndarray  # log N - log N0
    v: np.ndarray  # log D - log D0
    log_loss: np.ndarray
    weights: np.ndarray
    logN0: float
    logD0: float
    e_max: float  # upper bound of E: the smallest observed loss among weighted points
    loss_fn: str = "huber"
    delta: float = DEFAULT_DELTA

    @classmethod
    def build(
        cls,
        N: np.ndarray,
        D: np.ndarray,
        loss: np.ndarray,
        weights: np.ndarray | None = None,
        loss_fn: str = "huber",
        delta: float = DEFAULT_DELTA,
        centre: tuple[float, float] | None = None,
    ) -> "Problem":
        """Validate arrays and centre them (at the given log centres, else at the data's means)."""
        N, D, loss = (np.asarray(x, dtype=np.float64).ravel() for x in (N, D, loss))
        if not (len(N) == len(D) == len(loss)):
            raise ValueError(f"N, D, loss lengths differ: {len(N)}, {len(D)}, {len(loss)}")
        for name, x in (("N", N), ("D", D), ("loss", loss)):
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{name} has NaN/inf values")
            if np.any(x <= 0):
                raise ValueError(f"{name} has non-positive values")
        w = np.ones_like(N) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
        get_loss(loss_fn)  # fail early on an unknown name
        lN, lD = np.log(N), np.log(D)
        if centre is None:
            centre = (float(np.average(lN, weights=w)), float(np.average(lD, weights=w)))
        used = w > 0
        return cls(
            u=lN - centre[0],
            v=lD - centre[1],
            log_loss=np.log(loss),
            weights=w,
            logN0=centre[0],
            logD0=centre[1],
            e_max=float(loss[used].min()),
            loss_fn=loss_fn,
            delta=float(delta),
        )

    def with_weights(self, weights: np.ndarray) -> "Problem":
        """The same data with other per-point weights (E's bound follows the points kept)."""
        used = weights > 0
        e_max = float(np.exp(self.log_loss[used].min()))
        return Problem(self.u, self.v, self.log_loss, np.asarray(weights, np.float64), self.logN0,
                       self.logD0, e_max, self.loss_fn, self.delta)

    def bounds(self) -> list[tuple[float | None, float | None]]:
        """L-BFGS-B bounds on theta = (E, a, b, alpha, beta)."""
        return [(0.0, self.e_max), (None, None), (None, None), EXP_BOUNDS, EXP_BOUNDS]


def objective(theta: np.ndarray, p: Problem) -> tuple[float, np.ndarray]:
    """Summed robust loss of the log residuals at theta and its exact gradient.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    >>> f, grad = objective(from_natural(truth, p), p)
    >>> f < 1e-20, bool(np.abs(grad).max() < 1e-9)  # zero loss and a flat gradient at the truth
    (True, True)
    """
    E, a, b, alpha, beta = theta
    # A line search may probe a point whose terms overflow: the inf it gets back makes it step
    # back, so the overflow is expected there, not a warning for the user.
    with np.errstate(over="ignore", invalid="ignore"):
        t1 = np.exp(a - alpha * p.u)
        t2 = np.exp(b - beta * p.v)
        pred = E + t1 + t2
        r = np.log(np.maximum(pred, _TINY)) - p.log_loss
        vals, ders = get_loss(p.loss_fn)(r, p.delta)
        g = p.weights * ders / pred  # d(sum)/d(pred) per point
        grad = np.array([g.sum(), (g * t1).sum(), (g * t2).sum(), -(g * t1 * p.u).sum(), -(g * t2 * p.v).sum()])
    return float(p.weights @ vals), grad


def to_natural(theta: np.ndarray, p: Problem) -> dict[str, float]:
    """(E, a, b, alpha, beta) in centred coordinates -> {E, A, B, alpha, beta}.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> nat = to_natural(np.array([1.7, 0.0, 0.0, 0.34, 0.28]), p)  # a = b = 0: both terms are 1 at the centre
    >>> nat["E"], round(nat["A"] / float(np.exp(0.34 * p.logN0)), 6)  # A = N0^alpha
    (1.7, 1.0)
    """
    E, a, b, alpha, beta = (float(x) for x in theta)
    return {"E": E, "A": float(np.exp(a + alpha * p.logN0)), "B": float(np.exp(b + beta * p.logD0)),
            "alpha": alpha, "beta": beta}


def from_natural(params: dict[str, float], p: Problem) -> np.ndarray:
    """{E, A, B, alpha, beta} -> centred theta, clipped into the problem's bounds.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    >>> {k: round(v, 6) for k, v in to_natural(from_natural(truth, p), p).items()} == truth  # a round trip
    True
    >>> float(from_natural({**truth, "alpha": 5.0}, p)[3])  # clipped into EXP_BOUNDS
    2.0
    """
    alpha = float(np.clip(params["alpha"], *EXP_BOUNDS))
    beta = float(np.clip(params["beta"], *EXP_BOUNDS))
    E = float(np.clip(params["E"], 0.0, p.e_max))
    a = np.log(max(params["A"], _TINY)) - alpha * p.logN0
    b = np.log(max(params["B"], _TINY)) - beta * p.logD0
    return np.array([E, a, b, alpha, beta])


def polish(theta0: np.ndarray, p: Problem, maxiter: int = 2000) -> tuple[np.ndarray, float]:
    """Local minimum of the summed robust loss from theta0 (L-BFGS-B with exact gradients).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> start = from_natural({"E": 1.5, "A": 300.0, "B": 500.0, "alpha": 0.3, "beta": 0.3}, p)
    >>> theta, f = polish(start, p)
    >>> {k: round(v, 3) for k, v in to_natural(theta, p).items()}
    {'E': 1.7, 'A': 400.0, 'B': 400.0, 'alpha': 0.34, 'beta': 0.28}
    """
    theta0 = np.asarray(theta0, dtype=np.float64).copy()
    lo = np.array([b[0] if b[0] is not None else -np.inf for b in p.bounds()])
    hi = np.array([b[1] if b[1] is not None else np.inf for b in p.bounds()])
    theta0 = np.clip(theta0, lo, hi)
    f0, _ = objective(theta0, p)
    # L-BFGS-B's stopping test on f is absolute for |f| < 1; the summed Huber of good fits is
    # ~1e-3, so rescale to O(1) or it stops long before the optimum (the "mean Huber" trap).
    scale = 1.0 / max(f0, 1e-12)

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective(t, p)
        return f * scale, g * scale

    theta, f = theta0, f0
    for _ in range(3):  # restarts clear L-BFGS-B's curvature memory at kinks of the Huber loss
        res = minimize(fun, theta, jac=True, method="L-BFGS-B", bounds=p.bounds(),
                       options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-11, "maxcor": 20})
        f_new = res.fun / scale
        if f_new >= f * (1 - 1e-10):
            if f_new < f:
                theta, f = res.x, f_new
            break
        theta, f = res.x, f_new
    return np.asarray(theta, dtype=np.float64), float(f)


def _bounded_linear_ls(X1: np.ndarray, X2: np.ndarray, y: np.ndarray, w: np.ndarray, e_max: float):
    """Per grid cell: min sum w (E + A x1 + B x2 - y)^2 / y^2 over E in [0, e_max], A, B >= 0.

    X1, X2 have shape (cells, n). Returns (E, A, B) arrays of shape (cells,). The bounded problem
    is convex, so its minimiser is the unconstrained minimiser on one face of the box; we solve
    all 12 faces for all cells in one go and keep the best feasible one.
    """
    G, n = X1.shape
    sw = np.sqrt(w) / y  # relative error ~ log residual
    cols = [np.broadcast_to(sw, (G, n)), X1 * sw, X2 * sw]
    target = y * sw
    best_sse = np.full(G, np.inf)
    best = np.zeros((G, 3))
    # Each variable is free (None) or fixed at a bound value.
    for fixE in (None, 0.0, e_max):
        for fixA in (None, 0.0):
            for fixB in (None, 0.0):
                fixed = [fixE, fixA, fixB]
                free = [i for i in range(3) if fixed[i] is None]
                resid = np.broadcast_to(target, (G, n)).copy()
                for i in range(3):
                    if fixed[i] is not None and fixed[i] != 0.0:
                        resid -= fixed[i] * cols[i]
                sol = np.zeros((G, 3))
                for i in range(3):
                    if fixed[i] is not None:
                        sol[:, i] = fixed[i]
                if free:
                    M = np.stack([cols[i] for i in free], axis=-1)  # (G, n, k)
                    gram = np.einsum("gni,gnj->gij", M, M)
                    rhs = np.einsum("gni,gn->gi", M, resid)
                    gram += np.eye(len(free)) * 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None]
                    x = np.linalg.solve(gram, rhs[..., None])[..., 0]
                    for k, i in enumerate(free):
                        sol[:, i] = x[:, k]
                    fit = np.einsum("gni,gi->gn", M, x)
                    sse = ((resid - fit) ** 2).sum(axis=1)
                else:
                    sse = (resid**2).sum(axis=1)
                ok = (sol[:, 0] >= -1e-12) & (sol[:, 0] <= e_max * (1 + 1e-12)) & (sol[:, 1] >= 0) & (sol[:, 2] >= 0)
                better = ok & (sse < best_sse)
                best_sse = np.where(better, sse, best_sse)
                best[better] = sol[better]
    return best[:, 0], best[:, 1], best[:, 2]


def grid_seeds(p: Problem, size: int = GRID_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Seeds theta for every (alpha, beta) grid cell and their robust objectives, shape (size, size).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> thetas, f = grid_seeds(p, size=8)
    >>> thetas.shape, f.shape
    ((8, 8, 5), (8, 8))
    """
    grid = np.linspace(EXP_BOUNDS[0], EXP_BOUNDS[1], size)
    al, be = np.meshgrid(grid, grid, indexing="ij")
    al, be = al.ravel(), be.ravel()
    X1 = np.exp(-al[:, None] * p.u[None, :])
    X2 = np.exp(-be[:, None] * p.v[None, :])
    y = np.exp(p.log_loss)
    E, A, B = _bounded_linear_ls(X1, X2, y, p.weights, p.e_max)
    # A or B at 0 means that term is absent; keep it tiny but finite so the polish can revive it.
    floor = 1e-8 * y.min()
    A, B = np.maximum(A, floor), np.maximum(B, floor)
    pred = E[:, None] + A[:, None] * X1 + B[:, None] * X2
    r = np.log(pred) - p.log_loss[None, :]
    vals, _ = get_loss(p.loss_fn)(r, p.delta)
    f = vals @ p.weights
    thetas = np.stack([E, np.log(A), np.log(B), al, be], axis=1)
    return thetas.reshape(size, size, 5), f.reshape(size, size)


def pick_seeds(thetas: np.ndarray, f: np.ndarray, k: int = N_POLISH) -> list[np.ndarray]:
    """The k best local minima of the grid objective (8-neighbourhood), best first.

    >>> f = np.array([[3.0, 2.0, 3.0], [4.0, 5.0, 4.0], [1.0, 4.0, 0.5]])
    >>> thetas = np.arange(45.0).reshape(3, 3, 5)
    >>> [float(s[0]) for s in pick_seeds(thetas, f, k=3)]  # minima at cells (2,2), (2,0), (0,1)
    [40.0, 30.0, 5.0]
    """
    size = f.shape[0]
    padded = np.pad(f, 1, constant_values=np.inf)
    is_min = np.ones_like(f, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= f <= padded[1 + di:1 + di + size, 1 + dj:1 + dj + size]
    idx = np.flatnonzero(is_min.ravel())
    idx = idx[np.argsort(f.ravel()[idx], kind="stable")][:k]
    if len(idx) == 0:
        idx = np.array([int(np.argmin(f))])
    flat = thetas.reshape(-1, 5)
    return [flat[i] for i in idx]


def global_fit(p: Problem, extra_starts: list[np.ndarray] = (), size: int = GRID_SIZE,
               k: int = N_POLISH) -> tuple[np.ndarray, float]:
    """Best polished minimum over the grid's best local minima (and any extra starts).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> theta, f = global_fit(p)
    >>> {k: round(v, 3) for k, v in to_natural(theta, p).items()}
    {'E': 1.7, 'A': 400.0, 'B': 400.0, 'alpha': 0.34, 'beta': 0.28}
    """
    thetas, f = grid_seeds(p, size)
    starts = pick_seeds(thetas, f, k) + [np.asarray(s, dtype=np.float64) for s in extra_starts]
    best_theta, best_f = None, np.inf
    for s in starts:
        theta, fv = polish(s, p)
        if fv < best_f:
            best_theta, best_f = theta, fv
    return best_theta, best_f


def batch_polish(theta0: np.ndarray, p: Problem, W: np.ndarray, max_iter: int = 200,
                 rtol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Polish many reweightings of one problem at once (bootstrap refits), from a common start.

    Vectorised Levenberg-Marquardt on the IRLS majoriser of the robust loss: each step solves
    (J'WJ + lam*diag(J'WJ)) d = -J'W r with W = weight * psi(r)/r, whose right side is the exact
    gradient; steps are projected onto the bounds and kept only when the true objective drops.
    Returns thetas (K, 5) and objectives (K,).

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> p = Problem.build(N, D, 1.7 + 400 / N**0.34 + 400 / D**0.28)
    >>> truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    >>> W = np.ones((3, 16)); W[1, :4] = 0.0; W[2] = 2.0  # three reweightings (bootstrap counts)
    >>> thetas, f = batch_polish(from_natural(truth, p), p, W)
    >>> thetas.shape, bool(np.allclose(thetas[:, 3], 0.34))
    ((3, 5), True)
    """
    W = np.asarray(W, dtype=np.float64)
    K = W.shape[0]
    loss = get_loss(p.loss_fn)
    logy = p.log_loss
    e_max = np.array([np.exp(logy[w > 0].min()) for w in W])
    lo = np.stack([np.zeros(K), np.full(K, -np.inf), np.full(K, -np.inf),
                   np.full(K, EXP_BOUNDS[0]), np.full(K, EXP_BOUNDS[0])], axis=1)
    hi = np.stack([e_max, np.full(K, np.inf), np.full(K, np.inf),
                   np.full(K, EXP_BOUNDS[1]), np.full(K, EXP_BOUNDS[1])], axis=1)
    theta = np.clip(np.broadcast_to(np.asarray(theta0, np.float64), (K, 5)), lo, hi)

    def evaluate(th):
        t1 = np.exp(th[:, 1:2] - th[:, 3:4] * p.u)
        t2 = np.exp(th[:, 2:3] - th[:, 4:5] * p.v)
        pred = th[:, 0:1] + t1 + t2
        r = np.log(np.maximum(pred, _TINY)) - logy
        vals, ders = loss(r, p.delta)
        return (W * vals).sum(axis=1), r, ders, t1, t2, pred

    f, r, ders, t1, t2, pred = evaluate(theta)
    lam = np.full(K, 1e-3)
    active = np.ones(K, dtype=bool)
    eye = np.eye(5)
    for _ in range(max_iter):
        if not active.any():
            break
        J = np.stack([np.ones_like(pred), t1, t2, -p.u * t1, -p.v * t2], axis=-1) / pred[..., None]
        safe_r = np.where(np.abs(r) > 1e-14, r, 1.0)
        omega = W * np.where(np.abs(r) > 1e-14, ders / safe_r, 1.0)
        Jt = np.swapaxes(J, 1, 2)
        H = (Jt * omega[:, None, :]) @ J
        g = (Jt @ (W * ders)[..., None])[..., 0]
        dH = np.diagonal(H, axis1=1, axis2=2)
        A = H + lam[:, None, None] * (dH[:, :, None] * eye + 1e-12 * eye)
        step = -np.linalg.solve(A, g[..., None])[..., 0]
        cand = np.clip(theta + step, lo, hi)
        f_new, r_new, d_new, t1n, t2n, pn = evaluate(cand)
        ok = active & (f_new < f)
        rel = np.where(ok, (f - f_new) / np.maximum(f, 1e-300), 0.0)
        theta = np.where(ok[:, None], cand, theta)
        f = np.where(ok, f_new, f)
        r = np.where(ok[:, None], r_new, r)
        ders = np.where(ok[:, None], d_new, ders)
        t1 = np.where(ok[:, None], t1n, t1)
        t2 = np.where(ok[:, None], t2n, t2)
        pred = np.where(ok[:, None], pn, pred)
        lam = np.where(ok, np.maximum(lam / 3.0, 1e-9), lam * 4.0)
        # Done when a step was taken but gained almost nothing, or damping exploded (no descent left).
        active &= ~((ok & (rel < rtol)) | (lam > 1e12))
    return theta, f
