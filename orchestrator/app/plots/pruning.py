"""The pruner's decisions: where each stopped trial was stopped on its curve, the final loss it was
predicted to reach (with the interval) and, where known, the loss it would have reached."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.figure import Figure

from ._columns import LOSS_LABEL, _column


def pruner_decisions(curves: Mapping[str, Mapping[str, Any]], trials: Any, *, level: Optional[float] = None) -> Figure:
    """Eval loss vs tokens (log x): finished trials in grey; each stopped trial's curve up to its stop
    (a cross), a dotted line to its predicted final loss at its planned tokens (a diamond with the
    interval) and the true final loss where known (a hollow circle); diverged trials end in red.

    `curves`: {trial_id: {tokens, loss}} every trial's reports. `trials`: rows with trial_id, status
    (finished, stopped, diverged, ...), D (planned tokens) and, for stopped trials, optionally
    predicted, low, high (its predicted final loss) and truth (the final loss it would have reached).
    """
    fig = Figure(figsize=(8.4, 5.2))
    ax = fig.add_subplot()
    rows = list(trials) if not isinstance(trials, Mapping) else [dict(zip(trials, v)) for v in zip(*trials.values())]
    seen: set[str] = set()

    def label(text: str) -> Optional[str]:
        if text in seen:
            return None
        seen.add(text)
        return text

    ends: list[float] = []  # losses the y range must show: stop points, predictions, truths, final losses
    n_stopped = 0
    n_div = sum(1 for r in rows if r.get("status") == "diverged")  # most diverge before a finite report
    for r in rows:
        c = curves.get(r["trial_id"])
        if c is None:
            continue
        t, y = _column(c, "tokens"), _column(c, "loss")
        ok = np.isfinite(t) & np.isfinite(y) & (t > 0)
        t, y = t[ok], y[ok]
        if not len(t):
            continue
        status = r.get("status")
        if status == "finished":
            ax.plot(t, y, color="grey", lw=0.6, alpha=0.5, zorder=1, label=label("finished trials"))
            ends.append(float(y[-1]))
        elif status == "diverged":
            ax.plot(t, y, color="tab:red", lw=0.8, alpha=0.7, zorder=2)
            ax.plot([t[-1]], [y[-1]], marker="x", color="tab:red", ms=7, ls="none", zorder=4,
                    label=label("diverged (last finite report)"))
        elif status == "stopped":
            n_stopped += 1
            colour = _COLOURS[n_stopped % len(_COLOURS)]
            ax.plot(t, y, color=colour, lw=1.2, zorder=3)
            ax.plot([t[-1]], [y[-1]], marker="X", color=colour, ms=8, ls="none", zorder=5,
                    label=label("stopped here by the pruner"))
            ends.append(float(y[-1]))
            planned = _get(r, "D")
            pred = _get(r, "predicted")
            if math.isfinite(planned) and math.isfinite(pred):
                lo, hi = _get(r, "low"), _get(r, "high")
                yerr = [[max(pred - lo, 0)], [max(hi - pred, 0)]] if math.isfinite(lo) and math.isfinite(hi) else None
                band = f" ({level:.0%} interval where known)" if level is not None else ""
                ax.plot([t[-1], planned], [y[-1], pred], color=colour, ls=":", lw=1, zorder=3)
                ax.errorbar([planned], [pred], yerr=yerr, fmt="D", ms=5, color=colour, capsize=2, zorder=5,
                            label=label(f"its predicted final loss{band}"))
                ends += [pred] + ([hi] if yerr is not None else [])
            truth = _get(r, "truth")
            if math.isfinite(planned) and math.isfinite(truth):
                ax.scatter([planned], [truth], facecolors="none", edgecolors=[colour], s=60, lw=1.4, zorder=6,
                           label=label("its true final loss (had it run on)"))
                ends.append(truth)
    if ends:
        lo_, hi_ = min(ends), max(ends)
        pad = 0.15 * (hi_ - lo_ or 0.1)
        ax.set_ylim(lo_ - pad, hi_ + 2 * pad)  # early reports (near ln V) would squash the decisions
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D (tokens)")
    ax.set_ylabel(LOSS_LABEL.replace("final ", ""))
    ax.set_title(f"Pruner decisions: {n_stopped} stopped early, {n_div} diverged")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def _get(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)
