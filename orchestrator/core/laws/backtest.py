"""Backtest a Chinchilla fit: train below a compute threshold, predict the runs above it."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .chinchilla import fit_chinchilla
from .objectives import DEFAULT_DELTA


def backtest(N, D, loss, threshold_C: float, *, C=None, loss_fn: str = "huber", delta: float = DEFAULT_DELTA,
             bin_width: float = 0.5) -> dict[str, Any]:
    """Fit on runs with C <= threshold_C, predict the others; errors by decades beyond the largest training C.

    C defaults to 6ND. Distance of a held-out run = log10(C / max training C); runs are grouped in
    bins of ``bin_width`` decades. Errors are relative (pred/obs - 1) and in log space.

    >>> N = np.repeat([1e7, 3e7, 1e8, 3e8], 4); D = np.tile([1e9, 3e9, 1e10, 3e10], 4)
    >>> L = 1.7 + 400 / N**0.34 + 400 / D**0.28  # a planted Chinchilla law
    >>> r = backtest(N, D, L, threshold_C=6e17)
    >>> r["n_train"], r["n_test"], r["overall"]["max_abs_rel_error"] < 1e-6
    (6, 10, True)
    """
    N, D, loss = (np.asarray(x, dtype=np.float64) for x in (N, D, loss))
    C = 6.0 * N * D if C is None else np.asarray(C, dtype=np.float64)
    train = C <= threshold_C
    test = ~train
    if train.sum() < 5:
        raise ValueError(f"{int(train.sum())} run(s) at or below C = {threshold_C:.3g}: need at least 5 to fit")
    if not test.any():
        raise ValueError(f"no run above C = {threshold_C:.3g} to predict")
    fit = fit_chinchilla(N[train], D[train], loss[train], loss_fn=loss_fn, delta=delta)
    pred = fit.law.predict(N[test], D[test])
    rel = pred / loss[test] - 1.0
    logerr = np.log(pred) - np.log(loss[test])
    c_max = float(C[train].max())
    dist = np.log10(C[test] / c_max)
    edges = np.arange(0.0, math.floor(dist.max() / bin_width) * bin_width + bin_width * 1.0001, bin_width)
    which = np.clip(np.digitize(dist, edges) - 1, 0, len(edges) - 2) if len(edges) > 1 else np.zeros(len(dist), int)
    bins = []
    for i in range(max(len(edges) - 1, 1)):
        m = which == i
        if not m.any():
            continue
        bins.append({
            "decades_low": float(edges[i]), "decades_high": float(edges[i] + bin_width), "n": int(m.sum()),
            **_errors(rel[m], logerr[m]),
        })
    return {
        "threshold_C": float(threshold_C),
        "max_train_C": c_max,
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
        "params": fit.params,
        "objective": fit.objective,
        "warnings": fit.warnings,
        "overall": _errors(rel, logerr),
        "by_distance": bins,
        "points": [{"N": float(n), "D": float(d), "C": float(c), "decades": float(x), "observed": float(o),
                    "predicted": float(p)}
                   for n, d, c, x, o, p in zip(N[test], D[test], C[test], dist, loss[test], pred)],
    }


def _errors(rel: np.ndarray, logerr: np.ndarray) -> dict[str, float]:
    return {
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "bias_rel": float(np.mean(rel)),
        "rmse_log": float(np.sqrt(np.mean(logerr**2))),
    }
