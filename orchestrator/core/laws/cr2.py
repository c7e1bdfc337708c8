"""Intervals for a prediction of a least-squares (or Huber) fit with few clusters (model sizes): the CR2
cluster-robust variance and the exact small-sample distribution of its t statistic.

Why not the leave-one-size-out jackknife (CV3) with t(G − 1), used before: in a linear model
the jackknife's change of a prediction when size g is left out is ``c'M⁻¹X_g'(I − H_gg)⁻¹e_g``,
and the size's residuals are already shrunk by the fit, ``E[e_g e_g'] = σ²(I − H_gg)``, so the
squared change carries the leverage factor ``(I − H_gg)⁻¹`` once too often. An extrapolation
leans on the largest size (leverage near 1): on the planted downstream law the jackknife's
standard error was 1.7–2.6× the true one. And most of a prediction's variance comes from one or
two sizes, so a variance estimate has about 1–2 degrees of freedom, not G − 1: the two errors
cancel only in part. CR2 (Bell & McCaffrey 2002) applies ``(I − H_gg)^{-1/2}`` on each side —
exactly unbiased when the rows have the *working* variances ``phi`` — and the critical value is
the quantile of |T| under that working model with normal errors, simulated (Imbens & Kolesár 2016
approximate the same distribution by a t with Satterthwaite's degrees of freedom, returned as
``df``). Nonlinear fits are linearised at the solution: ``X`` is the Jacobian of the fitted
values, ``c`` the gradient of the prediction. A Huber fit is linearised as the M-estimator it is
(:meth:`Block.huber`). Several blocks (the two steps of a fit) share the clusters; their errors
may correlate within a cluster (the meat is summed per cluster across blocks).

Measured (benchmarks/downstream_intervals.py, 400 replications of each of the 13 planted settings
of benchmarks/downstream.py --coverage, the accuracy and, for the two-step fit, the loss): this
interval covered 0.853–0.940, inside issue 18's 85–95 % everywhere; the jackknife 0.900–0.978
(over 0.95 in 4 of 15), CR2 with t(G − 1) 0.713–0.900, CR2 with Bell–McCaffrey's t 0.890–0.975,
wild cluster bootstrap-t (Webb weights, CR2-transformed residuals) 0.64–0.86.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DRAWS = 20_000  # simulated working-model samples for the critical value (its Monte Carlo error ~0.5 %)


@dataclass(frozen=True)
class Block:
    """One least-squares block at its solution, in weighted coordinates (each row times sqrt(weight))."""

    X: np.ndarray  # (n, P): d fitted / d theta
    r: np.ndarray  # (n,): observed - fitted
    groups: np.ndarray  # (n,): cluster labels, shared between blocks
    phi: np.ndarray  # (n,): working variance of each row, in the units of r (blocks are compared)
    q: np.ndarray | None = None  # (n,): an M-estimator's psi' (the bread's weights); None: least squares (1)

    @classmethod
    def weighted(cls, J: np.ndarray, resid: np.ndarray, groups: np.ndarray, w: np.ndarray | None = None,
                 shape: np.ndarray | None = None) -> "Block":
        """The block of a fit with row weights ``w`` (default 1), Jacobian ``J`` (n, P) and residuals
        ``resid``; the working variance is ``shape`` (default 1) times the residuals' scale
        (sum w r² / sum w shape · n / (n − P)).

        >>> b = Block.weighted(np.ones((4, 1)), np.array([1.0, -1.0, 1.0, -1.0]), np.arange(4), np.full(4, 4.0))
        >>> b.r.tolist(), b.phi.tolist()  # rows times sqrt(w) = 2; working variance w · 4/3
        ([2.0, -2.0, 2.0, -2.0], [5.333333333333333, 5.333333333333333, 5.333333333333333, 5.333333333333333])
        """
        J, resid = np.asarray(J, np.float64), np.asarray(resid, np.float64)
        n, P = J.shape
        w = np.ones(n) if w is None else np.asarray(w, np.float64)
        shape = np.ones(n) if shape is None else np.asarray(shape, np.float64)
        sw = np.sqrt(w)
        scale = float(np.sum(w * resid ** 2) / max(float(np.sum(w * shape)), 1e-300)) * n / max(n - P, 1)
        return cls(J * sw[:, None], resid * sw, np.asarray(groups), w * shape * max(scale, 1e-300))


    @classmethod
    def huber(cls, J: np.ndarray, resid: np.ndarray, groups: np.ndarray, delta: float) -> "Block":
        """The block of a Huber fit (Huber 1967's sandwich): the scores psi(r) = clip(r, ±delta) as residuals,
        the bread weighted by psi'(r) (0 where |r| >= delta), the scores' working variance constant,
        sum psi² / (n − P). Linearising it as least squares at its IRLS weights min(1, delta/|r|) instead
        counts a clipped row in the bread and under-covers (planted two-step law: loss 0.83, not 0.90).

        >>> b = Block.huber(np.ones((4, 1)), np.array([0.5, -0.5, 2.0, 0.0]), np.arange(4), delta=1.0)
        >>> b.r.tolist(), b.q.tolist()  # the third row is clipped and leaves the bread
        ([0.5, -0.5, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0])
        """
        J, resid = np.asarray(J, np.float64), np.asarray(resid, np.float64)
        n, P = J.shape
        psi = np.clip(resid, -delta, delta)
        return cls(J, psi, np.asarray(groups), np.full(n, float(np.sum(psi ** 2)) / max(n - P, 1)),
                   (np.abs(resid) < delta).astype(np.float64))


def _inv_sqrt(B: np.ndarray) -> np.ndarray:
    """Symmetric pseudo-inverse square root (directions with no variance left out)."""
    lam, V = np.linalg.eigh((B + B.T) / 2)
    keep = lam > 1e-12 * max(float(lam.max()), 1e-300)
    return (V[:, keep] / np.sqrt(lam[keep])) @ V[:, keep].T


def cr2_interval(estimate: np.ndarray, blocks: list[Block], grads: list[np.ndarray], level: float = 0.9,
                 draws: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """``estimate`` ± crit · se for m predictions; ``grads[k]`` (m, P_k): d prediction / d theta_k.

    Returns arrays (m,) ``low``, ``high``, ``se`` (CR2), ``crit`` (the ``level`` quantile of |T| under
    the working model) and ``df`` (Bell–McCaffrey's Satterthwaite degrees of freedom, for reference).

    A straight line y = 1 + x through 5 clusters of 4 rows (x = 0..4), predicted at x = 8:

    >>> x = np.repeat([0.0, 1.0, 2.0, 3.0, 4.0], 4); g = np.repeat(np.arange(5), 4)
    >>> y = 1 + x + np.random.default_rng(1).normal(0.0, 0.1, 20)
    >>> X = np.stack([np.ones(20), x], axis=1); theta = np.linalg.lstsq(X, y, rcond=None)[0]
    >>> out = cr2_interval(np.array([theta @ [1.0, 8.0]]), [Block(X, y - X @ theta, g, np.ones(20))],
    ...                    [np.array([[1.0, 8.0]])])
    >>> bool(out["low"][0] < 9.0 < out["high"][0])
    True
    >>> round(float(out["df"][0]), 2), round(float(out["crit"][0]), 2)  # t(4) would be 2.13, t(1.82) 3.13
    (1.82, 2.73)
    """
    est = np.atleast_1d(np.asarray(estimate, np.float64))
    labels = np.unique(np.concatenate([np.asarray(b.groups) for b in blocks]))
    S, m = len(labels), len(est)
    u = np.zeros((m, S))  # each cluster's CR2-adjusted contribution to each prediction's error
    ells, gms, phis = [], [], []
    for b, c in zip(blocks, grads):
        X, r, phi = np.asarray(b.X, np.float64), np.asarray(b.r, np.float64), np.asarray(b.phi, np.float64)
        n = len(r)
        q = np.ones(n) if b.q is None else np.asarray(b.q, np.float64)
        Minv = np.linalg.pinv(X.T @ (q[:, None] * X), rcond=1e-12)
        IH = np.eye(n) - (q[:, None] * X) @ Minv @ X.T  # the residuals (scores) are IH times the errors' scores
        a = np.atleast_2d(np.asarray(c, np.float64)) @ Minv  # (m, P)
        Gc = np.zeros((m, n, S))
        for s, lab in enumerate(labels):
            idx = np.flatnonzero(np.asarray(b.groups) == lab)
            if not len(idx):
                continue
            d = np.sqrt(phi[idx])
            Bg = d[:, None] * ((IH[idx] * phi) @ IH[idx].T) * d[None, :]
            A = d[:, None] * _inv_sqrt(Bg) * d[None, :]  # A (I-H)_g Phi (I-H)_g' A = Phi_g
            AXa = (A @ X[idx] @ a.T).T  # (m, n_g)
            u[:, s] += AXa @ r[idx]
            Gc[:, idx, s] = AXa
        ells.append(X @ a.T)  # (n, m): the prediction's error is l' eps
        gms.append(np.einsum("ji,mjs->mis", IH, Gc))  # cluster s's u is Gm_s' eps
        phis.append(phi)
    ell, Gm, Phi = np.vstack(ells), np.concatenate(gms, axis=1), np.concatenate(phis)
    se = np.sqrt(np.sum(u ** 2, axis=1))
    eps = np.random.default_rng(seed).standard_normal((draws, len(Phi))) * np.sqrt(Phi)
    crit, df = np.empty(m), np.empty(m)
    for i in range(m):
        T = np.abs(eps @ ell[:, i]) / np.maximum(np.sqrt(np.sum((eps @ Gm[i]) ** 2, axis=1)), 1e-300)
        crit[i] = np.quantile(T, level)
        B = Gm[i].T @ (Gm[i] * Phi[:, None])
        df[i] = np.trace(B) ** 2 / max(float(np.trace(B @ B)), 1e-300)
    with np.errstate(invalid="ignore"):
        half = np.where(np.isfinite(crit * se), crit * se, np.inf)  # no residual left to scale: unbounded
    return {"low": est - half, "high": est + half, "se": se, "crit": crit, "df": df}
