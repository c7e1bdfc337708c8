"""Final loss vs compute: the runs, each size's fitted curve, the frontier with its band, the backtest, the proposals."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ._columns import C_LABEL, LOSS_LABEL, _column, _count, _fmt, _interval


def loss_vs_compute(
    runs: Any,
    frontier: Optional[Mapping[str, Any]] = None,
    proposals: Any = None,
    *,
    curves: Optional[Mapping[float, Mapping[str, Any]]] = None,
    heldout: Any = None,
    level: Optional[float] = None,
    title: str = "Loss vs compute",
) -> Figure:
    """Final loss vs compute C (log x), one colour per N: the runs, each size's fitted curve, the
    frontier L*(C) with its band, the backtest's held-out runs and their predictions, proposals.

    `runs`: rows (or a mapping of arrays) with C, loss, N and optionally `used` (truthy: a point of
    the fit, drawn filled; the others hollow). `curves`: {N: {C, loss}} the law along D at that
    size. `frontier`: arrays C, mid and optionally low, high (a band at `level`). `heldout`: rows
    with C, loss (observed) and predicted (by a fit that did not see them), optionally an
    interval. `proposals`: rows with C (or budget), predicted_loss and optionally low/high or
    interval=[low, high].
    """
    C, loss, N = _column(runs, "C"), _column(runs, "loss"), _column(runs, "N")
    used = _column(runs, "used", False)
    fig = Figure(figsize=(7.6, 5.0))
    ax = fig.add_subplot()
    sizes = np.unique(N[np.isfinite(N)])
    cmap = matplotlib.colormaps["viridis"]
    colours = {float(n): cmap(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}
    for n in sizes:
        sel = (N == n) & np.isfinite(C) & np.isfinite(loss)
        colour = colours[float(n)]
        if used is None:
            ax.scatter(C[sel], loss[sel], color=colour, s=22, label=f"N = {_count(n)} params", zorder=3)
            continue
        fit_sel, other = sel & (used > 0), sel & ~(used > 0)
        ax.scatter(C[fit_sel], loss[fit_sel], color=colour, s=26, label=f"N = {_count(n)} params", zorder=3)
        if other.any():
            ax.scatter(C[other], loss[other], facecolors="none", edgecolors=[colour], s=18, lw=0.8, zorder=3)
    if used is not None:  # legend keys for the two markers, in neutral grey
        ax.scatter([], [], color="grey", s=26, label="runs in the fit (best per cell)")
        ax.scatter([], [], facecolors="none", edgecolors="grey", s=18, label="other runs")
    for i, (n, curve) in enumerate(sorted((curves or {}).items())):
        cc, cl = _column(curve, "C"), _column(curve, "loss")
        order = np.argsort(cc)
        colour = colours.get(float(n), cmap(0.5))
        ax.plot(cc[order], cl[order], color=colour, lw=1.0, alpha=0.9, zorder=2,
                label="fitted L(N, D) per size" if i == 0 else None)
    if frontier is not None:
        fc, mid = _column(frontier, "C"), _column(frontier, "loss")
        order = np.argsort(fc)
        ax.plot(fc[order], mid[order], color="black", lw=1.6, label="frontier L*(C)", zorder=4)
        low, high = _column(frontier, "low", False), _column(frontier, "high", False)
        if low is not None and high is not None:
            band = f"frontier {level:.0%} band" if level is not None else "frontier band"
            ax.fill_between(fc[order], low[order], high[order], color="black", alpha=0.15, lw=0, label=band)
    if heldout is not None and len(heldout):
        hc, hl = _column(heldout, "C"), _column(heldout, "loss")
        hp = _column(heldout, "predicted")
        ax.scatter(hc, hl, marker="s", facecolors="none", edgecolors="tab:red", s=46, lw=1.2, zorder=5,
                   label="held out (backtest): observed")
        ax.errorbar(hc, hp, yerr=_interval(heldout, hp), fmt="x", ms=7, color="tab:red", capsize=2, zorder=5,
                    label="held out: predicted without them")
    if proposals is not None and len(proposals):
        pc, pl = _column(proposals, "C"), _column(proposals, "predicted_loss")
        ax.errorbar(pc, pl, yerr=_interval(proposals, pl), fmt="*", ms=11, color="crimson",
                    ecolor="crimson", capsize=3, label="proposals", zorder=5)
        c_max = float(np.nanmax(C)) if np.isfinite(C).any() else math.nan
        if math.isfinite(c_max):
            ax.axvspan(c_max, max(float(np.nanmax(pc)), c_max) * 1.5, color="crimson", alpha=0.05, lw=0,
                       label="extrapolation (beyond the largest run)")
            for x, y in zip(pc, pl):
                if x > c_max:
                    ax.annotate(f"{math.log10(x / c_max):.1f} dec. out", (x, y), fontsize=6, xytext=(4, -10),
                                textcoords="offset points", color="crimson")
    ax.set_xscale("log")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty plot has nothing to label
        ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return fig
