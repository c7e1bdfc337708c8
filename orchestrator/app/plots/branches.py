"""WSD branching: each trunk's stable-phase curve and the cooldown branches forked from its checkpoints."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
from matplotlib.figure import Figure

from ._columns import LOSS_LABEL, _column, _count, _fmt


def wsd_branches(curves: Mapping[str, Mapping[str, Any]], trials: Any, *, max_trunks: int = 3) -> Figure:
    """One panel per model size N: eval loss vs tokens (log x) of its trunks (solid; the `max_trunks`
    with the lowest final loss) and each trunk's branches (dashed, same colour) from their branch
    point (a dot) to their end (a diamond: the point the branch adds to the L(N, D) fit).

    `curves`: {trial_id: {tokens, loss}}. `trials`: rows with trial_id, N, lr, batch, branch_of (the
    trunk's id, None for a trunk), branch_tokens (tokens at the branch point) and loss (final).
    """
    rows = list(trials)
    by_id = {r["trial_id"]: r for r in rows}
    branches: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("branch_of") in by_id:
            branches.setdefault(r["branch_of"], []).append(r)
    trunks = [by_id[t] for t in branches]
    sizes = sorted({float(t["N"]) for t in trunks})
    cols = min(3, max(1, len(sizes)))
    rows_n = max(1, math.ceil(len(sizes) / cols))
    fig = Figure(figsize=(4.6 * cols, 3.8 * rows_n))
    for k, n in enumerate(sizes):
        ax = fig.add_subplot(rows_n, cols, k + 1)
        here = sorted((t for t in trunks if float(t["N"]) == n), key=lambda t: _final(t))[:max_trunks]
        for j, trunk in enumerate(here):
            colour = f"C{j}"
            t, y = _curve(curves.get(trunk["trial_id"]))
            ax.plot(t, y, color=colour, lw=1.4, label=f"trunk lr = {_fmt(trunk['lr'])}, batch = {_count(trunk['batch'])} tokens")
            for b in branches[trunk["trial_id"]]:
                bt, by = _curve(curves.get(b["trial_id"]))
                start = float(b.get("branch_tokens") or math.nan)
                if math.isfinite(start) and len(t) and t[0] <= start <= t[-1]:  # join it to its trunk at the branch point
                    y0 = float(np.interp(math.log(start), np.log(t), y))
                    bt, by = np.concatenate([[start], bt]), np.concatenate([[y0], by])
                    ax.plot([start], [y0], marker="o", color=colour, ms=4, ls="none", zorder=4,
                            label="branch point (trunk checkpoint)" if j == 0 and b is branches[trunk["trial_id"]][0] else None)
                ax.plot(bt, by, color=colour, ls="--", lw=1.1,
                        label="cooldown branch" if j == 0 and b is branches[trunk["trial_id"]][0] else None)
                if len(bt):
                    ax.plot([bt[-1]], [by[-1]], marker="D", color=colour, ms=4, ls="none", zorder=4,
                            label="branch end: an (N, D) point" if j == 0 and b is branches[trunk["trial_id"]][0] else None)
        finals = [v for tr in here for v in [_final(tr)] + [_final(b) for b in branches[tr["trial_id"]]] if math.isfinite(v)]
        if finals:  # show the stable phase and the cooldowns, not the first reports near ln V
            ax.set_ylim(min(finals) - 0.05 * abs(min(finals)), max(finals) + 0.25 * abs(max(finals) - min(finals) + 0.1))
        ax.set_xscale("log")
        ax.set_xlabel("training tokens D (tokens)")
        ax.set_ylabel(LOSS_LABEL.replace("final ", ""))
        ax.set_title(f"WSD trunk + branches, N = {_count(n)} params", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper right")
    if not sizes:
        ax = fig.add_subplot()
        ax.set_title("no WSD branches in this sweep")
        ax.set_xlabel("training tokens D (tokens)")
        ax.set_ylabel(LOSS_LABEL.replace("final ", ""))
    fig.tight_layout()
    return fig


def _curve(c: Optional[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    if c is None:
        return np.empty(0), np.empty(0)
    t, y = _column(c, "tokens"), _column(c, "loss")
    ok = np.isfinite(t) & np.isfinite(y) & (t > 0)
    return t[ok], y[ok]


def _final(r: Mapping[str, Any]) -> float:
    v = r.get("loss")
    return math.inf if v is None or not math.isfinite(float(v)) else float(v)
