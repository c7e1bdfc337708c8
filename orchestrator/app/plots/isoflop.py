"""IsoFLOP curves: loss vs N at (nearly) equal compute, each curve's minimum, and N_opt(C) from the minima."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ._columns import C_LABEL, LOSS_LABEL, N_LABEL, _column, _fmt
from .isoflop_slices import isoflop_slices, parabola_vertex


def group_by_compute(C: Sequence[float], rel_tol: float = 0.05) -> np.ndarray:
    """Group labels for compute values equal within `rel_tol` (budgets are rarely exact).

    >>> group_by_compute([1e18, 1.02e18, 3e18]).tolist()
    [0, 0, 1]
    """
    logc = np.log(np.asarray(C, dtype=np.float64))
    order = np.argsort(logc)
    labels = np.empty(len(logc), dtype=np.int64)
    group, anchor = -1, -np.inf
    for idx in order:
        if logc[idx] - anchor > math.log1p(rel_tol):
            group += 1
            anchor = logc[idx]
        labels[idx] = group
    return labels


def power_law(C: Sequence[float], N: Sequence[float]) -> Optional[tuple[float, float]]:
    """Least-squares N = k C^a in log-log: (k, a), or None with fewer than two distinct C.

    >>> k, a = power_law([1e18, 1e20], [1e8, 1e9]); round(a, 3)
    0.5
    """
    c, n = np.log(np.asarray(C, dtype=np.float64)), np.log(np.asarray(N, dtype=np.float64))
    ok = np.isfinite(c) & np.isfinite(n)
    if len(np.unique(c[ok])) < 2:
        return None
    a, log_k = np.polyfit(c[ok], n[ok], 1)
    return float(math.exp(log_k)), float(a)


def isoflop_curves(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    C: Sequence[float],
    fits: Any = None,
    *,
    slices: Optional[Mapping[float, Mapping[str, Any]]] = None,
    frontier: Optional[Mapping[str, Any]] = None,
    proposals: Any = None,
    rel_tol: float = 0.05,
    level: Optional[float] = None,
    read_off: bool = False,
    levels: Optional[Sequence[float]] = None,
) -> Figure:
    """Left: loss vs N (log x) per compute group with a parabola in ln N and its minimum (N_opt at
    that C) where the group's lowest point has a point on each side. Right: N_opt vs C (log-log): the minima, the power law N_opt = k C^a fitted to them,
    the fitted law's frontier N*(C) and the proposals' N* with their intervals.

    `fits`: None (points only), True (fit a parabola in ln N here for groups with >= 3 points), or
    {C of the group: np.polyval coefficients in ln N, highest first}. `slices`: {C: {N, loss}} the
    fitted L(N, D) along the isoFLOP line D = C / 6N, drawn dashed with its minimum. `frontier`:
    arrays C, N (the law's N*(C)). `proposals`: rows with C (or budget), N and optionally N_low,
    N_high. `rel_tol`: compute values within it form one group.

    `read_off`: the points are each size's loss along its compute (final losses or training curves),
    not runs at shared budgets: the groups are `isoflop_slices` at `levels` (default: log-spaced where
    >= 3 sizes reach), each with its parabola (`fits` is ignored) and its minimum where bracketed.
    """
    N, D, loss, C = (np.asarray(x, dtype=np.float64) for x in (N, D, loss, C))
    if not (len(N) == len(D) == len(loss) == len(C)):
        raise ValueError("N, D, loss and C must have the same length")
    groups = (_read_off_groups(N, C, loss, levels) if read_off else _budget_groups(N, loss, C, fits, rel_tol))
    fig = Figure(figsize=(11.5, 4.8))
    ax, ax_opt = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    cmap = matplotlib.colormaps["plasma"]
    minima: list[tuple[float, float]] = []  # (C, N_opt) of each convex parabola with its vertex inside the data
    how = " (read off each size's curve)" if read_off else ""
    for i, (c_mid, gn, gl, coeffs, fitted) in enumerate(groups):
        colour = cmap(i / max(len(groups), 1))
        face = dict(marker="s", facecolors="none", edgecolors=[colour]) if read_off else dict(color=colour)
        ax.scatter(gn, gl, s=22, label=f"C = {_fmt(c_mid)} FLOPs", zorder=3, **face)
        if coeffs is None:
            continue
        x = np.linspace(np.log(gn[fitted].min()), np.log(gn[fitted].max()), 100)
        first = not any(ln.get_label().startswith("parabola in ln N") for ln in ax.lines)
        ax.plot(np.exp(x), np.polyval(coeffs, x), color=colour, lw=1.2, label=f"parabola in ln N{how}" if first else None)
        # a minimum only where the level's lowest run has a size on each side (else it may lie beyond them)
        vertex = parabola_vertex(coeffs, np.log(gn[fitted]), gl[fitted], bracketed=True)
        if vertex is not None:
            ax.plot([np.exp(vertex)], [np.polyval(coeffs, vertex)], marker="v", color=colour, ms=8, ls="none",
                    markeredgecolor="black", zorder=5, label=None if minima else "its minimum: N_opt at that C")
            minima.append((c_mid, float(np.exp(vertex))))
    for j, (c, sl) in enumerate(sorted((slices or {}).items())):
        sn, sloss = _column(sl, "N"), _column(sl, "loss")
        order = np.argsort(sn)
        ax.plot(sn[order], sloss[order], color="grey", ls="--", lw=0.9, zorder=2,
                label="fitted L(N, D) along each C" if j == 0 else None)
        k = int(np.nanargmin(sloss))
        ax.plot([sn[k]], [sloss[k]], marker="D", color="black", ms=4, ls="none", zorder=4,
                label="its minimum N*(C)" if j == 0 else None)
        ax.annotate(f"{_fmt(c)}", (sn[k], sloss[k]), fontsize=6, xytext=(3, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(N_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title("IsoFLOP curves")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, ncol=2)
    _n_opt_panel(ax_opt, minima, frontier, proposals, level)
    fig.tight_layout()
    return fig


def _budget_groups(N: np.ndarray, loss: np.ndarray, C: np.ndarray, fits: Any,
                   rel_tol: float) -> list[tuple[float, np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]]:
    """(C, N, loss, parabola coefficients or None, mask of the runs it is fitted to) per group of runs at (nearly) the same compute."""
    labels = group_by_compute(C, rel_tol) if len(C) else np.empty(0, dtype=np.int64)
    given = dict(fits) if isinstance(fits, Mapping) else {}
    out = []
    for g in np.unique(labels):
        sel = labels == g
        c_mid = float(np.exp(np.mean(np.log(C[sel]))))
        coeffs = None
        if given:
            key = min(given, key=lambda k: abs(math.log(float(k)) - math.log(c_mid)))
            if abs(math.log(float(key)) - math.log(c_mid)) < 0.1:
                coeffs = np.asarray(given[key], dtype=np.float64)
        elif fits is True and len(np.unique(N[sel])) >= 3:
            coeffs = np.polyfit(np.log(N[sel]), loss[sel], 2)
        out.append((c_mid, N[sel], loss[sel], coeffs, np.ones(int(sel.sum()), dtype=bool)))
    return out


def _read_off_groups(N: np.ndarray, C: np.ndarray, loss: np.ndarray, levels: Optional[Sequence[float]]
                     ) -> list[tuple[float, np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray]]:
    """(C, N, loss, parabola coefficients, mask of the sizes it is fitted to) per isoFLOP slice read off the sizes' curves."""
    return [(s["C"], s["N"], s["loss"], s["coeffs"], s["fitted"]) for s in isoflop_slices(N, C, loss, levels=levels)]


def _n_opt_panel(ax, minima: list[tuple[float, float]], frontier: Optional[Mapping[str, Any]], proposals: Any,
                 level: Optional[float]) -> None:
    """N_opt vs C: the isoFLOP minima and their power law, the law's frontier, the proposals."""
    if minima:
        mc, mn = np.array(minima).T
        ax.scatter(mc, mn, marker="v", color="tab:purple", s=40, zorder=4, label="isoFLOP minima")
        law = power_law(mc, mn)
        if law is not None:
            k, a = law
            cs = np.geomspace(mc.min() / 2, mc.max() * 2, 20)
            ax.plot(cs, k * cs**a, color="tab:purple", lw=1.2, label=f"N_opt = {_fmt(k)} C^{a:.2f} (fit to the minima)")
    if frontier is not None:
        fc, fn = _column(frontier, "C"), _column(frontier, "N")
        order = np.argsort(fc)
        ax.plot(fc[order], fn[order], color="black", lw=1.4, label="fitted L(N, D): N*(C)")
    if proposals is not None and len(proposals):
        pc, pn = _column(proposals, "C"), _column(proposals, "N")
        lo, hi = _column(proposals, "N_low", False), _column(proposals, "N_high", False)
        yerr = None if lo is None or hi is None else np.vstack([np.maximum(pn - lo, 0), np.maximum(hi - pn, 0)])
        band = f" ({level:.0%} interval)" if level is not None and yerr is not None else ""
        ax.errorbar(pc, pn, yerr=yerr, fmt="*", ms=11, color="crimson", capsize=3, zorder=5, label=f"proposals N*{band}")
    if ax.has_data():  # a log axis over nothing warns and draws nothing
        if len(minima) == 1 and frontier is None and not (proposals is not None and len(proposals)):
            c, n = minima[0]  # one point: give the log axes a decade around it
            ax.set_xlim(c / 3, c * 3)
            ax.set_ylim(n / 3, n * 3)
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel("compute-optimal N (params)")
    ax.set_title("N_opt(C)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5)
