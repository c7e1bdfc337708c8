"""Downstream task accuracy vs compute, one panel per task."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ._columns import C_LABEL, _column, _fmt, _interval


def accuracy_vs_compute(
    tasks: Mapping[str, Mapping[str, Any]],
    *,
    level: Optional[float] = None,
    title: str = "Task accuracy vs compute",
) -> Figure:
    """One panel per downstream task: accuracy vs compute C (log x), one colour per N.

    Each task maps to: `runs`, rows (or a mapping of arrays) with C, acc, N (the fit's points);
    optionally `curve`, {C, acc, low, high}: the fitted law's accuracy along the loss frontier (the
    compute-optimal N*, D* of each C) with its band at `level`; `curves`, {N: {C, acc}}: the law
    along D at each size; `heldout`, rows with C, acc (observed), predicted and optionally an
    interval (a backtest that did not see them); `proposals`, rows with C (or budget), acc and
    optionally an interval; `chance`, drawn as a dashed line.
    """
    names = list(tasks)
    cols = min(len(names), 2) or 1
    rows_n = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(6.4 * cols, 4.4 * rows_n))
    cmap = matplotlib.colormaps["viridis"]
    for k, name in enumerate(names):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        t = tasks[name]
        runs = t.get("runs") or []
        C, acc, N = (_column(runs, c, False) for c in ("C", "acc", "N"))
        sizes = np.unique(N[np.isfinite(N)]) if N is not None else np.array([])
        colours = {float(n): cmap(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}
        for n in sizes:
            sel = (N == n) & np.isfinite(C) & np.isfinite(acc)
            ax.scatter(C[sel], acc[sel], color=colours[float(n)], s=22, label=f"N = {_fmt(n)} params", zorder=3)
        for i, (n, curve) in enumerate(sorted((t.get("curves") or {}).items())):
            cc, ca = _column(curve, "C"), _column(curve, "acc")
            order = np.argsort(cc)
            ax.plot(cc[order], ca[order], color=colours.get(float(n), cmap(0.5)), lw=1.0, alpha=0.9, zorder=2,
                    label="fitted law per size" if i == 0 else None)
        curve = t.get("curve")
        if curve is not None:
            fc, fa = _column(curve, "C"), _column(curve, "acc")
            order = np.argsort(fc)
            ax.plot(fc[order], fa[order], color="black", lw=1.6, zorder=4, label="fitted, compute-optimal (N*, D*)")
            low, high = _column(curve, "low", False), _column(curve, "high", False)
            if low is not None and high is not None and np.isfinite(low).any():
                band = f"{level:.0%} band" if level is not None else "band"
                ax.fill_between(fc[order], low[order], high[order], color="black", alpha=0.15, lw=0, label=band)
        heldout = t.get("heldout")
        if heldout is not None and len(heldout):
            hc, ha, hp = _column(heldout, "C"), _column(heldout, "acc"), _column(heldout, "predicted")
            ax.scatter(hc, ha, marker="s", facecolors="none", edgecolors="tab:red", s=46, lw=1.2, zorder=5,
                       label="held out (largest N): observed")
            ax.errorbar(hc, hp, yerr=_interval(heldout, hp), fmt="x", ms=7, color="tab:red", capsize=2, zorder=5,
                        label="held out: predicted without it")
        proposals = t.get("proposals")
        if proposals is not None and len(proposals):
            pc, pa_ = _column(proposals, "C"), _column(proposals, "acc")
            ax.errorbar(pc, pa_, yerr=_interval(proposals, pa_), fmt="*", ms=11, color="crimson", ecolor="crimson",
                        capsize=3, label="proposals", zorder=5)
        chance = t.get("chance")
        if chance is not None and math.isfinite(float(chance)):
            ax.axhline(float(chance), color="grey", ls="--", lw=1, label=f"chance {float(chance):.2g}")
        ax.set_xscale("log")
        ax.set_xlabel(C_LABEL)
        ax.set_ylabel("accuracy (fraction correct)")
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return fig
