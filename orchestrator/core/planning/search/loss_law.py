"""The search's online L(N, D) fit: the form chosen by how well it extrapolates, with replicates.

`fit_loss` fits the candidate forms with `laws.selection.fit_auto` (or one named form:
`spec.fit.law`), the same selection the sweep's final fit and proposals use, so that on a world
whose loss is not of Chinchilla form the search's acquisition, pruning and stopping see the form
that backtests best instead of a Chinchilla surface that misses the largest size.

`LossLaw` answers what the search needs for every bootstrap replicate of the mixture: the forms'
replicates, each form getting a share of `bootstrap` rows in proportion to its weight, so that a
statistic over the rows (a covariance, a quantile) mixes the forms by weight.

>>> import numpy as np
>>> N = np.repeat(np.geomspace(1e6, 1e8, 4), 4); D = N * np.tile([5.0, 20, 80, 320], 4)
>>> law = fit_loss(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, bootstrap=20, seed=0, targets=[1e19])
>>> law.frontier_samples([1e19])["N_opt"].shape
(20, 1)
>>> bool(law.regret_risk([1e19], 0.9)[0] >= -1e-9)
True
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...laws.chinchilla import budget_key
from ...laws.forms import grid_frontier, inputs
from ...laws.selection import AutoFit, FormFit, fit_auto, forms_of


class LossLaw:
    """The fitted L(N, D) (`.law.predict`, `.law.frontier`, `.intervals`) with its replicates by form."""

    def __init__(self, fit: AutoFit, rows: int):
        self.fit = fit
        self.law = fit.law
        self.form = fit.form
        self._parts = _shares(fit.law.fits, rows)  # (form fit, its replicate rows), by weight

    @property
    def intervals(self) -> dict:
        """Budget intervals keyed by `laws.chinchilla.budget_key` (the mixture's)."""
        return self.fit.intervals

    @property
    def params(self) -> dict[str, float]:
        """The chosen form's parameters."""
        return self.fit.params

    def log_predict_samples(self, N: Sequence[float], D: Sequence[float]) -> np.ndarray:
        """log L_k(N_j, D_j) for every replicate k (rows) and point j (columns)."""
        X = inputs(np.asarray(list(N), float), np.asarray(list(D), float))
        return np.concatenate([f.form.log_predict(reps, X) for f, reps in self._parts], axis=0)

    def frontier_samples(self, C: Sequence[float]) -> dict[str, np.ndarray]:
        """N_opt, D_opt, loss_opt at budgets C for every replicate: arrays (K, len(C))."""
        parts = [grid_frontier(lambda n, d, f=f, reps=reps: f.form.log_predict(reps, inputs(n, d)), list(C),
                               "6ND", self.law.n_min) for f, reps in self._parts]
        return {k: np.concatenate([p[k] for p in parts], axis=0) for k in ("N_opt", "D_opt", "loss_opt")}

    def regret_risk(self, targets: Sequence[float], level: float) -> list[float]:
        """Per target C: the `level` quantile over the replicates of the regret of today's (N*, D*)
        proposal, each replicate's law taken as the truth (its loss at our point over its own optimum,
        minus 1). A flat frontier tolerates a wide N* interval, a steep one does not."""
        est = self.law.frontier(targets)
        opt = self.frontier_samples(targets)["loss_opt"]  # (K, T)
        at_ours = np.exp(np.stack([self.log_predict_samples([n], [d])[:, 0]
                                   for n, d in zip(est["N_opt"], est["D_opt"])], axis=1))  # (K, T)
        return [float(np.quantile(at_ours[:, k] / opt[:, k] - 1.0, level)) for k in range(len(targets))]

    def noise(self, N: np.ndarray, D: np.ndarray, L: np.ndarray, floor: float) -> float:
        """Relative noise of a cell's best loss: the robust residual scale (MAD) on the fitted points, floored
        (the floor alone with fewer than 6 points)."""
        if len(N) < 6:
            return floor
        r = np.log(L) - np.log(self.law.predict(N, D))
        return max(floor, 1.4826 * float(np.median(np.abs(r - np.median(r)))))

    def estimate(self, targets: Sequence[float], level: float,
                 hparams: Callable[[float, float], tuple]) -> list[dict[str, Any]]:
        """Per target C: N*, D*, L* with intervals and relative widths, lr and batch from `hparams(N, D)`."""
        fr = self.law.frontier(targets)
        ivs = self.intervals.get("budgets", {})
        widths = self.widths(targets, level)
        out = []
        for k, C in enumerate(targets):
            n, d = float(fr["N_opt"][k]), float(fr["D_opt"][k])
            lr, batch = hparams(n, d)
            out.append({"budget": float(C), "N": n, "D": d, "predicted_loss": float(fr["loss_opt"][k]),
                        "lr": lr, "batch": batch, "intervals": ivs.get(budget_key(C), {}),
                        "N_rel_width": widths[k][0], "loss_rel_width": widths[k][1]})
        return out

    def widths(self, targets: Sequence[float], level: float) -> list[tuple[float, float]]:
        """Relative widths of the `level` intervals of N*(C) and L*(C) at each target."""
        fr = self.frontier_samples(targets)
        est = self.law.frontier(targets)
        lo, hi = 50 * (1 - level), 50 * (1 + level)
        out = []
        for k in range(len(targets)):
            a, b = np.percentile(fr["N_opt"][:, k], [lo, hi])
            c, d = np.percentile(fr["loss_opt"][:, k], [lo, hi])
            out.append((float((b - a) / est["N_opt"][k]), float((d - c) / est["loss_opt"][k])))
        return out


def fit_loss(N: np.ndarray, D: np.ndarray, L: np.ndarray, *, bootstrap: int, seed: int, targets: Sequence[float],
             level: float = 0.9, law: str = "auto", loss: str = "huber") -> LossLaw:
    """L(N, D) on the searched cells' best losses: `law` "auto" (every candidate form, chosen and
    weighted by backtest) or one named form; `bootstrap` replicates in all.

    >>> import numpy as np
    >>> N = np.repeat(np.geomspace(1e4, 1e6, 4), 4); D = N * np.tile([5.0, 20, 80, 320], 4)
    >>> law = fit_loss(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, bootstrap=0, seed=0, targets=[1e15])
    >>> law.form in ("chinchilla", "kaplan", "equal-exponent")
    True
    """
    fit = fit_auto(N, D, L, forms=forms_of(law), loss_fn=loss, bootstrap=bootstrap, seed=seed,
                   budgets=list(targets), level=level)
    return LossLaw(fit, bootstrap)


def backtest_by_size(N: np.ndarray, D: np.ndarray, L: np.ndarray, noise: float, *, law: str = "auto",
                     loss: str = "huber") -> Optional[dict[str, Any]]:
    """Backtest of L(N, D) by size: every candidate form fitted without the largest size, RMS log
    error on that size's cells (`fit_auto`'s leave-the-largest-size-out backtest). `misfit`: the
    form the search uses misses by more than twice the stated noise of a loss (more than noise can
    explain: its intervals assume the form and are too narrow). None with fewer than 4 sizes.

    >>> import numpy as np
    >>> N = np.repeat(np.geomspace(1e4, 1e6, 4), 4); D = N * np.tile([5.0, 20, 80, 320], 4)
    >>> bt = backtest_by_size(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, noise=0.003)
    >>> bool(bt["held_out_N"] == N.max()), bt["cells"]
    (True, 4)
    """
    sizes = sorted(set(np.asarray(N).tolist()))
    if len(sizes) < 4:
        return None
    # The stated noise, not the fit's residual scale: a wrong form inflates its own residuals.
    out: dict[str, Any] = {"held_out_N": sizes[-1], "cells": int(np.sum(np.asarray(N) == sizes[-1])), "noise": noise}
    try:
        fit = fit_auto(N, D, L, forms=forms_of(law), loss_fn=loss, bootstrap=0)
    except ValueError:
        return None
    errs = {f.name: f.backtests.get("largest_size", {}).get("rmse_log") for f in fit.fits}
    errs = {k: float(v) if v is not None and math.isfinite(v) else None for k, v in errs.items()}
    chosen = errs.get(fit.form)
    out.update(errs, form=fit.form, misfit=chosen is not None and chosen > 2.0 * noise,
               better_form=min((k for k, v in errs.items() if v is not None), key=lambda k: errs[k], default=None))
    return out


def _shares(fits: Sequence[FormFit], rows: int) -> list[tuple[FormFit, np.ndarray]]:
    """Each weighted form's replicate rows, `rows` in all in proportion to the weights (largest
    remainders; a form with weight gets at least one row); its full fit when it has no replicates."""
    w = np.array([f.weight for f in fits], float)
    raw = w / w.sum() * max(rows, len(fits))
    k = np.maximum(np.floor(raw).astype(int), 1)
    for i in np.argsort(-(raw - np.floor(raw)))[: max(rows - int(k.sum()), 0)]:
        k[i] += 1
    out = []
    for f, n in zip(fits, k):
        reps = f.samples if f.samples is not None and len(f.samples) else f.theta[None, :]
        out.append((f, reps[np.arange(n) % len(reps)]))
    return out
