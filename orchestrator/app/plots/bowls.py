"""Learning-rate and batch bowls: final loss vs lr (or batch) in each (N, D) cell, with the fitted lr*(N, D)
and batch*(D) laws marked where they put each cell's optimum."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ._columns import LOSS_LABEL, _column, _count, _fmt

HparamLaw = Callable[[float, float], tuple[Optional[float], Optional[float]]]  # (N, D) -> (lr*, batch*)
AXES = {"lr": ("lr", "batch", "peak learning rate lr"), "batch": ("batch", "lr", "global batch (tokens)")}


def hparam_bowls(runs: Any, law: Optional[HparamLaw] = None, *, axis: str = "lr", max_cells: int = 16) -> Figure:
    """One panel per (N, D) cell: final loss vs `axis` ("lr" or "batch", log x), one line per value of
    the other hyperparameter, diverged runs as crosses on the panel's top edge, and the law's optimum
    (lr*(N, D) or batch*(D)) as a vertical line.

    `runs`: rows (or a mapping of arrays) with N, D (the cell's nominal D), lr, batch and loss (NaN
    for a diverged run). `law`: (N, D) -> (lr*, batch*), e.g. `orchestrator.core.proposals.learned_hparams`.
    The `max_cells` cells with the most runs are drawn.
    """
    x_key, other_key, x_label = AXES[axis]
    N, D, X, O, loss = (_column(runs, k) for k in ("N", "D", x_key, other_key, "loss"))
    cells = sorted({(float(n), float(d)) for n, d in zip(N, D)})
    counts = {c: int(np.sum((N == c[0]) & (D == c[1]))) for c in cells}
    cells = sorted(sorted(cells, key=lambda c: -counts[c])[:max_cells])
    cols = min(4, max(1, len(cells)))
    rows_n = max(1, math.ceil(len(cells) / cols))
    fig = Figure(figsize=(3.3 * cols, 2.7 * rows_n + 0.9))
    others = np.unique(O[np.isfinite(O)])
    cmap = matplotlib.colormaps["viridis"]
    colours = {float(o): cmap(i / max(len(others) - 1, 1)) for i, o in enumerate(others)}
    for k, (n, d) in enumerate(cells):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        sel = (N == n) & (D == d)
        finite = sel & np.isfinite(loss)
        top = float(np.nanmax(loss[finite])) if finite.any() else 1.0
        for o in others:
            s = finite & (O == o)
            order = np.argsort(X[s])
            ax.plot(X[s][order], loss[s][order], marker="o", ms=3.5, lw=1, color=colours[float(o)],
                    label=f"{other_key} = {_count(o)} tokens" if other_key == "batch" else f"lr = {_fmt(o)}")
        div = sel & ~np.isfinite(loss)
        if div.any():
            ax.scatter(X[div], np.full(int(div.sum()), top), marker="x", color="tab:red", s=30, zorder=4,
                       label="diverged (drawn at the top)")
        if law is not None:
            opt = law(n, d)[0 if axis == "lr" else 1]
            if opt is not None and math.isfinite(opt) and opt > 0:
                what = "fitted lr*(N, D)" if axis == "lr" else "fitted batch*(D)"
                ax.axvline(opt, color="black", ls="--", lw=1.1, label=what)
        ax.set_xscale("log")
        ax.set_title(f"N = {_count(n)} params, D = {_count(d)} tokens", fontsize=8)
        ax.set_xlabel(x_label, fontsize=7)
        ax.set_ylabel(LOSS_LABEL, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in fig.axes:  # one figure legend: every panel draws the same kinds of artists
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 5), fontsize=7)
    what = "Learning-rate bowls per cell" if axis == "lr" else "Batch-size bowls per cell"
    if law is None:
        what += " (no lr*(N, D) / batch*(D) law: too few learning rates and batches per cell to fit one)"
    fig.suptitle(what, y=0.995, fontsize=10, x=0.01, ha="left")
    # fixed margins: tight_layout over a dozen panels costs seconds at the end of every sweep
    h = fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.5 / h, top=1 - 0.9 / h, wspace=0.3, hspace=0.55)
    return fig
