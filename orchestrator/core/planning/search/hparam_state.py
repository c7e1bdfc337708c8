"""The search's hyperparameter laws: lr*(N, D) and batch*(D) learned from the searched cells, their
intervals, and the lr hedge towards the flatter side of an asymmetric bowl.

`HparamLaws.fit` regresses the resolved cells' optima (a ridge on log lr*, log batch*); with the
transfer strategy it refines them by one bowl shared by every run of those cells
(`laws.hparam_surface`). Law checks near the target (`checks.py`) measure how wrong the lr law is
where it is extrapolated; that error widens lr*'s interval and sets the hedge (`lr_sigma`).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Optional, Sequence

import numpy as np

from ...laws.hparam_surface import SurfaceFit, fit_surface
from ...laws.hparams import BatchLaw, HparamError, LrLaw
from .lattice import SearchCell, cell_optimum

Checks = Sequence[dict[str, Any]]  # what the law checks found (checks.check_record)


class HparamLaws:
    """lr* = c·N^a·D^b and batch* = c'·D^d learned from searched cells (None until the first is resolved)."""

    def __init__(self, ridge: float, surface: bool, hedge: bool):
        self.ridge, self.use_surface, self.hedge = ridge, surface, hedge
        self.lr_law: Optional[LrLaw] = None
        self.batch_law: Optional[BatchLaw] = None
        self.surface_: Optional[SurfaceFit] = None  # transfer: the joint fit behind the laws
        self.cells_: tuple[int, int] = (0, 0)  # resolved cells behind the lr and the batch law
        self.kind_ = ""
        self.edge_: Optional[float] = None  # the largest N the laws were fitted on

    def fit(self, cells: Sequence[SearchCell]) -> None:
        """Refit on the searched, resolved cells (a cell run once at the law's point locates no optimum)."""
        rows = [(c,) + cell_optimum(c) for c in cells]
        if not rows:
            return
        # An optimum on the lattice's edge along an axis only bounds the true optimum (it may lie
        # beyond the grid); regressing on it flattens the law, so such cells sit out that axis's fit.
        lr_rows = [r for r in rows if r[3]] or rows
        b_rows = [r for r in rows if r[4]] or rows
        X = np.log([[r[0].N, r[0].D] for r in lr_rows])
        c, a, b = ridge(X, np.array([r[1] for r in lr_rows]), self.ridge)
        cb, db = ridge(np.log([[r[0].D] for r in b_rows]), np.array([r[2] for r in b_rows]), self.ridge)
        self.lr_law = LrLaw(float(math.exp(c)), float(a), float(b))
        self.batch_law = BatchLaw(float(math.exp(cb)), float(db))
        self.cells_ = (len(lr_rows), len(b_rows))
        self.edge_ = max(r[0].N for r in rows)
        self.surface_ = None  # until the joint fit below succeeds on these cells
        if self.use_surface:
            self._fit_surface([r[0] for r in rows], (c, a, b, cb, db))

    def _fit_surface(self, cells: list[SearchCell], start: tuple[float, ...]) -> None:
        """Transfer: one bowl shared by every run of the searched cells; the laws are extrapolated
        decades, so every run should count."""
        runs = [(c.N, c.D, c.trials[p].lr, c.trials[p].batch, loss) for c in cells for p, loss in c.loss.items()]
        try:
            fit = fit_surface(*zip(*runs), start=start, asymmetric=self.hedge)
        except (HparamError, ValueError, np.linalg.LinAlgError):
            return  # too few cells or runs yet: keep the ridge laws
        self.lr_law, self.batch_law, self.surface_ = fit.lr_law, fit.batch_law, fit
        self.kind_ = f"one bowl over {fit.n_runs} runs of {fit.n_cells} cells"

    # ---- answers ---------------------------------------------------------------------------
    def law(self, N: float, D: float) -> tuple[Optional[float], Optional[float]]:
        """lr*(N, D) and batch*(D) as the learned laws state them (None, None before there are any)."""
        if self.lr_law is None:
            return None, None
        return float(self.lr_law(N, D)), float(self.batch_law(D))

    def predict(self, N: float, D: float, checks: Checks) -> tuple[Optional[float], Optional[float]]:
        """lr and batch to run at (N, D): the laws, the lr hedged (`lr_hedge`)."""
        lr, batch = self.law(N, D)
        if lr is None:
            return None, None
        return lr * self.lr_hedge(N, D, checks)["factor"], batch

    def intervals(self, N: float, D: float, checks: Checks, level: float = 0.9) -> Optional[dict[str, dict[str, float]]]:
        """Intervals of lr*, batch* at (N, D) from the joint surface (delta method), lr*'s widened to
        `lr_sigma` once law checks measured the law's extrapolation error (so a hedged lr, at most
        0.9 σ off, stays inside a 90 % interval). None without a joint surface."""
        if self.surface_ is None:
            return None
        iv = self.surface_.intervals(N, D, level)
        if iv is not None and checks:
            sd, lr = self.lr_sigma(N, D, checks), iv["lr"]["estimate"]
            z = z_of(level)
            if lr * math.exp(z * sd) > iv["lr"]["high"]:
                iv["lr"] = {**iv["lr"], "low": lr * math.exp(-z * sd), "high": lr * math.exp(z * sd),
                            "calibrated_by_checks": True}
        return iv

    def lr_sigma(self, N: float, D: float, checks: Checks) -> float:
        """Standard deviation of log lr*(N, D): the surface fit's own (delta method) and, once a law
        check measured the law's error at a size beyond the cells it was fitted on, that error scaled
        by how far (N, D) lies beyond the fitted sizes (per unit of log N)."""
        sd = 0.0
        iv = self.surface_.intervals(N, D, 0.6827) if self.surface_ is not None else None
        if iv is not None:
            sd = math.log(iv["lr"]["high"] / iv["lr"]["estimate"])
        errs = [(math.log(c["optimum_lr"] / c["law_lr"]), c["reach"]) for c in checks
                if c.get("optimum_lr") and c.get("law_lr") and c.get("reach")]
        if errs:
            per_unit = math.sqrt(sum((e / r) ** 2 for e, r in errs) / len(errs))
            edge = self.edge_ if self.edge_ is not None else N
            sd = math.hypot(sd, per_unit * max(0.0, math.log(N / edge)))
        return sd

    def lr_hedge(self, N: float, D: float, checks: Checks) -> dict[str, float]:
        """The lr factor that minimises the expected loss over the lr law's uncertainty at (N, D) when
        the bowl is steeper above lr* (`lr_asym` = r): with u = log lr − log lr* ~ N(δ, σ²), the loss
        grows as u² below lr* and r·u² above, so the best δ is ≤ 0 (0 for a symmetric bowl or a
        certain law). `hedge` off, or no joint surface yet: factor 1."""
        out = {"factor": 1.0, "sigma": 0.0, "asym": 1.0, "shift": 0.0}
        if not self.hedge or self.surface_ is None:
            return out
        r, sd = float(self.surface_.lr_asym), self.lr_sigma(N, D, checks)
        out.update(sigma=sd, asym=r)
        if sd <= 0 or abs(r - 1.0) < 1e-9:
            return out
        delta = hedge_shift(sd, r)
        out.update(factor=math.exp(delta), shift=delta)
        return out

    def source(self) -> str:
        """Where the laws came from, in words (for the decisions)."""
        if self.surface_ is not None:
            return f"laws from {self.kind_}"
        n_lr, n_b = self.cells_
        return f"lr law from {n_lr}, batch law from {n_b} resolved cells"

    def to_dict(self) -> dict[str, Any]:
        """JSON-clean laws."""
        return {"lr": asdict(self.lr_law) if self.lr_law else None,
                "batch": asdict(self.batch_law) if self.batch_law else None}


def hedge_shift(sigma: float, r: float) -> float:
    """δ minimising E[u²·(1 + (r − 1)·1{u > 0})] for u ~ N(δ, σ²) (the expected loss of an lr
    log-offset δ from an uncertain lr* on a bowl r times steeper above it).

    >>> round(hedge_shift(0.4, 3.0) / 0.4, 2), hedge_shift(0.4, 1.0)
    (-0.44, 0.0)
    """
    from scipy.optimize import minimize_scalar
    from scipy.stats import norm

    if sigma <= 0 or r == 1.0:
        return 0.0

    def expected(d: float) -> float:
        above = (d * d + sigma ** 2) * norm.cdf(d / sigma) + d * sigma * norm.pdf(d / sigma)
        return d * d + sigma ** 2 + (r - 1.0) * above

    lim = 3.0 * sigma
    return float(minimize_scalar(expected, bounds=(-lim, lim), method="bounded", options={"xatol": 1e-6}).x)


def ridge(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, ...]:
    """Intercept and slopes of y on X, slopes shrunk towards 0 (identifiable with any number of rows).

    >>> c, a = ridge(np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0]), 0.0)
    >>> round(c, 6), round(a, 6)
    (1.0, 2.0)
    """
    mx, my = X.mean(axis=0), y.mean()
    Xc = X - mx
    slopes = np.linalg.solve(Xc.T @ Xc + max(lam, 1e-9) * np.eye(X.shape[1]), Xc.T @ (y - my))
    return (float(my - mx @ slopes), *(float(s) for s in slopes))


def z_of(level: float) -> float:
    """The two-sided normal quantile of a central `level` interval.

    >>> round(z_of(0.9), 3)
    1.645
    """
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))
