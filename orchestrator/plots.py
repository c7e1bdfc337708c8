"""Sweep figures (matplotlib, rendered with Agg): loss vs compute with the frontier, isoFLOP curves,
predicted vs observed. Every function returns a `Figure` and never shows it; inputs are
plain arrays, mappings of arrays or lists of dicts so the module depends on nothing else.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import matplotlib
import numpy as np

# Figures are built with matplotlib.figure.Figure, not pyplot: no global backend state,
# no GUI, thread-safe per figure; savefig renders PNG with Agg whatever the backend is.
from matplotlib.figure import Figure

# Accepted spellings of the same column, first match wins.
_ALIASES = {
    "C": ("C", "flops", "compute", "budget"),
    "loss": ("loss", "final_loss", "eval_loss", "mid", "predicted_loss"),
    "N": ("N", "n_params"),
    "low": ("low", "lo", "loss_low"),
    "high": ("high", "hi", "loss_high"),
    "predicted": ("predicted", "predicted_loss", "prediction"),
}


def _column(data: Any, name: str, required: bool = True) -> Optional[np.ndarray]:
    """Column `name` (or an alias) from a mapping of arrays or a list of dicts, as float64."""
    keys = _ALIASES.get(name, (name,))
    if isinstance(data, Mapping):
        for k in keys:
            if k in data and data[k] is not None:
                return np.asarray(data[k], dtype=np.float64).ravel()
    else:
        rows = list(data)
        if not rows:  # no rows: an empty column, whatever its name (an empty plot, not a crash)
            return np.empty(0, dtype=np.float64)
        for k in keys:
            if all(k in r for r in rows):
                return np.array([_num(r[k]) for r in rows], dtype=np.float64)
    if required:
        raise KeyError(f"missing column {name!r} (accepted: {', '.join(keys)})")
    return None


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _interval(data: Any, estimate: np.ndarray) -> Optional[np.ndarray]:
    """Asymmetric error bars (2, n) from low/high columns or an `interval` [low, high] field."""
    low, high = _column(data, "low", False), _column(data, "high", False)
    if low is None and not isinstance(data, Mapping):
        rows = list(data)
        if rows and all("interval" in r for r in rows):
            pairs = np.array([[_num(v) for v in r["interval"]] for r in rows], dtype=np.float64)
            low, high = pairs[:, 0], pairs[:, 1]
    if low is None or high is None:
        return None
    return np.vstack([np.maximum(estimate - low, 0.0), np.maximum(high - estimate, 0.0)])


def _fmt(x: float) -> str:
    return f"{x:.3g}"


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
            ax.scatter(C[sel], loss[sel], color=colour, s=22, label=f"N={_fmt(n)}", zorder=3)
            continue
        fit_sel, other = sel & (used > 0), sel & ~(used > 0)
        ax.scatter(C[fit_sel], loss[fit_sel], color=colour, s=26, label=f"N={_fmt(n)}", zorder=3)
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
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("final eval loss (nats/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # an empty plot has nothing to label
        ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return fig


def group_by_compute(C: Sequence[float], rel_tol: float = 0.05) -> np.ndarray:
    """Group labels for compute values equal within `rel_tol` (budgets are rarely exact)."""
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


def isoflop_curves(
    N: Sequence[float],
    D: Sequence[float],
    loss: Sequence[float],
    C: Sequence[float],
    fits: Any = None,
) -> Figure:
    """Loss vs N (log x) per compute group, with a parabola in ln N per group.

    `fits`: None (points only), True (fit a parabola in ln N here for groups with >= 3
    points), or a mapping {C of the group: np.polyval coefficients in ln N, highest first}.
    """
    N = np.asarray(N, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if not (len(N) == len(D) == len(loss) == len(C)):
        raise ValueError("N, D, loss and C must have the same length")
    labels = group_by_compute(C)
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.add_subplot()
    groups = np.unique(labels)
    cmap = matplotlib.colormaps["plasma"]
    given = dict(fits) if isinstance(fits, Mapping) else {}
    for i, g in enumerate(groups):
        sel = labels == g
        c_mid = float(np.exp(np.mean(np.log(C[sel]))))
        colour = cmap(i / max(len(groups), 1))
        ax.scatter(N[sel], loss[sel], color=colour, s=22, label=f"C={_fmt(c_mid)}", zorder=3)
        coeffs = None
        if given:
            key = min(given, key=lambda k: abs(math.log(float(k)) - math.log(c_mid)))
            if abs(math.log(float(key)) - math.log(c_mid)) < 0.1:
                coeffs = np.asarray(given[key], dtype=np.float64)
        elif fits is True and sel.sum() >= 3:
            coeffs = np.polyfit(np.log(N[sel]), loss[sel], 2)
        if coeffs is not None:
            x = np.linspace(np.log(N[sel].min()), np.log(N[sel].max()), 100)
            ax.plot(np.exp(x), np.polyval(coeffs, x), color=colour, lw=1.2)
            if coeffs[0] > 0:  # convex: mark the vertex (the budget's optimal N)
                xv = -coeffs[1] / (2 * coeffs[0])
                if x[0] <= xv <= x[-1]:
                    ax.plot([np.exp(xv)], [np.polyval(coeffs, xv)], marker="v", color=colour,
                            ms=7, ls="none")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final loss")
    ax.set_title("IsoFLOP curves")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def predicted_vs_observed(
    observed: Sequence[float],
    predicted: Sequence[float],
    labels: Optional[Sequence[str]] = None,
) -> Figure:
    """Scatter of predicted vs observed loss with the y = x line and the mean relative error."""
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if obs.shape != pred.shape:
        raise ValueError("observed and predicted must have the same length")
    fig = Figure(figsize=(5.2, 5.0))
    ax = fig.add_subplot()
    ok = np.isfinite(obs) & np.isfinite(pred)
    ax.scatter(obs[ok], pred[ok], s=24, color="tab:blue", zorder=3, label="runs")
    if ok.any():
        lo = float(min(obs[ok].min(), pred[ok].min()))
        hi = float(max(obs[ok].max(), pred[ok].max()))
        pad = 0.03 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", ls="--", lw=1,
                label="y = x")
        mare = float(np.mean(np.abs(pred[ok] - obs[ok]) / np.abs(obs[ok])))
        ax.set_title(f"Predicted vs observed (mean rel. error {100 * mare:.2f} %)")
    else:
        ax.set_title("Predicted vs observed")
    if labels is not None:
        for x, y, text, good in zip(obs, pred, labels, ok):
            if good:
                ax.annotate(str(text), (x, y), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("observed loss")
    ax.set_ylabel("predicted loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


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
            ax.scatter(C[sel], acc[sel], color=colours[float(n)], s=22, label=f"N={_fmt(n)}", zorder=3)
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
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, ncol=2)
    fig.tight_layout()
    return fig
