"""Predicted vs observed loss (a backtest): the y = x line, each prediction's interval, the error and coverage."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from ._columns import LOSS_LABEL

_MARKERS = ("o", "s", "^", "D", "v")


def predicted_vs_observed(
    observed: Sequence[float],
    predicted: Sequence[float],
    labels: Optional[Sequence[str]] = None,
    *,
    low: Optional[Sequence[float]] = None,
    high: Optional[Sequence[float]] = None,
    level: Optional[float] = None,
    groups: Optional[Sequence[str]] = None,
    title: str = "Predicted vs observed",
) -> Figure:
    """Scatter of predicted vs observed loss with the y = x line, the mean relative error and, with
    `low`/`high`, each prediction's interval at `level` and how many observations it covers.

    `groups`: one name per point (e.g. which backtest held it out): one marker and legend entry each.
    """
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if obs.shape != pred.shape:
        raise ValueError("observed and predicted must have the same length")
    fig = Figure(figsize=(5.6, 5.2))
    ax = fig.add_subplot()
    ok = np.isfinite(obs) & np.isfinite(pred)
    names = np.asarray(groups if groups is not None else ["runs"] * len(obs), dtype=object)
    lo = None if low is None else np.asarray(low, dtype=np.float64)
    hi = None if high is None else np.asarray(high, dtype=np.float64)
    for i, name in enumerate(dict.fromkeys(names[ok])):
        sel = ok & (names == name)
        ax.scatter(obs[sel], pred[sel], s=24, marker=_MARKERS[i % len(_MARKERS)], zorder=3, label=str(name))
    band = ""
    if lo is not None and hi is not None:
        has = ok & np.isfinite(lo) & np.isfinite(hi)
        yerr = np.vstack([np.maximum(pred - lo, 0), np.maximum(hi - pred, 0)])[:, has]
        band = f"{level:.0%} interval" if level is not None else "interval"
        ax.errorbar(obs[has], pred[has], yerr=yerr, fmt="none", ecolor="grey", capsize=2, lw=0.8, zorder=2,
                    label=f"prediction's {band}")
        inside = int(np.sum((lo[has] <= obs[has]) & (obs[has] <= hi[has])))
        band = f", {inside}/{int(has.sum())} inside the {band}"
    if ok.any():
        ends = np.concatenate([obs[ok], pred[ok]])
        lo_, hi_ = float(ends.min()), float(ends.max())
        pad = 0.03 * (hi_ - lo_ or 1.0)
        ax.plot([lo_ - pad, hi_ + pad], [lo_ - pad, hi_ + pad], color="grey", ls="--", lw=1, label="y = x")
        mare = float(np.mean(np.abs(pred[ok] - obs[ok]) / np.abs(obs[ok])))
        ax.set_title(f"{title}\n(mean rel. error {100 * mare:.2f} %{band})", fontsize=10)
    else:
        ax.set_title(title, fontsize=10)
    if labels is not None:
        for x, y, text, good in zip(obs, pred, labels, ok):
            if good:
                ax.annotate(str(text), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"observed {LOSS_LABEL}")
    ax.set_ylabel(f"predicted {LOSS_LABEL}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
