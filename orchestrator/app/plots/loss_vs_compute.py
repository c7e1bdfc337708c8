"""Final loss vs compute: the runs, each size's fitted curve, the frontier with its band, the backtest, the proposals."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ._columns import C_LABEL, LOSS_LABEL, _column, _count, _interval

CURVES_LABEL = "fitted L(N, D) along D, one per size (its colour)"


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
    size, drawn in that size's colour. `frontier`: arrays C, mid and optionally low, high (a band
    at `level`). `heldout`: rows with C, loss (observed), predicted (by a fit that did not see
    them) and optionally N and low/high or interval=[low, high] (at `level`): each observed run
    boxed, its prediction marked with its interval, joined to it and labelled with its error.
    `proposals`: rows with C (or budget), predicted_loss and optionally low/high or
    interval=[low, high].
    """
    C, loss, N = _column(runs, "C"), _column(runs, "loss"), _column(runs, "N")
    used = _column(runs, "used", False)
    fig = Figure(figsize=(10.4, 5.2), layout="constrained")  # makes room for the legend beside the axes
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
    for n, curve in sorted((curves or {}).items()):
        cc, cl = _column(curve, "C"), _column(curve, "loss")
        order = np.argsort(cc)
        # above the frontier (zorder 4): where a size's curve touches the envelope it stays visible
        ax.plot(cc[order], cl[order], color=colours.get(float(n), cmap(0.5)), lw=1.4, alpha=0.95, zorder=4.5)
    if curves:  # one legend key for every size's curve, in neutral grey: the colour is the size's
        ax.plot([], [], color="grey", lw=1.4, label=CURVES_LABEL)
    if frontier is not None:
        fc, mid = _column(frontier, "C"), _column(frontier, "loss")
        order = np.argsort(fc)
        ax.plot(fc[order], mid[order], color="black", lw=1.6, label="frontier L*(C)", zorder=4)
        low, high = _column(frontier, "low", False), _column(frontier, "high", False)
        if low is not None and high is not None:
            band = f"frontier {level:.0%} band" if level is not None else "frontier band"
            ax.fill_between(fc[order], low[order], high[order], color="black", alpha=0.15, lw=0, label=band)
    if heldout is not None and len(heldout):
        _draw_heldout(ax, heldout, level)
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
        # beside the axes, not on them: inside, it hid runs or proposals whatever corner it took
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def _draw_heldout(ax: Any, heldout: Any, level: Optional[float]) -> None:
    """A backtest on the loss-vs-compute axes: each held-out run boxed, the prediction of the fit that
    did not see it (with its interval) joined to it by a dotted line and labelled with its error."""
    hc, hl, hp = _column(heldout, "C"), _column(heldout, "loss"), _column(heldout, "predicted")
    hn = _column(heldout, "N", False)
    err = hp / hl - 1.0
    ok = np.isfinite(err)
    sizes = ", ".join(f"N = {_count(n)}" for n in np.unique(hn[np.isfinite(hn)])) if hn is not None else ""
    ax.scatter(hc, hl, marker="s", facecolors="none", edgecolors="tab:red", s=54, lw=1.2, zorder=5,
               label=f"backtest: {sizes + ' ' if sizes else ''}held out, observed")
    for x, y, p in zip(hc[ok], hl[ok], hp[ok]):
        ax.plot([x, x], [y, p], color="tab:red", ls=":", lw=1.0, zorder=5)
    yerr = _interval(heldout, hp)
    band = f", {level:.0%} interval" if yerr is not None and level is not None else (", interval" if yerr is not None else "")
    mean = f" (mean |error| {100 * float(np.mean(np.abs(err[ok]))):.2g} %)" if ok.any() else ""
    ax.errorbar(hc, hp, yerr=yerr, fmt="x", ms=7, mew=1.4, color="tab:red", capsize=2, zorder=6,
                label=f"predicted by the fit without it{band}{mean}")
    for x, p, e in zip(hc[ok], hp[ok], err[ok]):
        ax.annotate(f"{100 * e:+.1f} %", (x, p), fontsize=6, xytext=(5, 2), textcoords="offset points",
                    color="tab:red")
