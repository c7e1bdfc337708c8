"""When the law search stops: the risk of its proposal, or the width of the target intervals.

With `regret_tolerance` (the transfer default) the search stops when, at every target, the
`level` quantile over the L(N, D) replicates of the regret of today's (N*, D*) proposal is below
it and the N*(C) interval is narrower than `tolerance` (the bootstrap is overconfident while few
cells are fitted). Without it: when the N*(C) and L*(C) intervals are narrower than `tolerance`
and `loss_tolerance`. Either must hold on `stop_streak` consecutive fits (the planner counts).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from .config import SearchConfig
from .lattice import SearchCell
from .loss_law import LossLaw


def stop_rule(law: LossLaw, targets: Sequence[float], config: SearchConfig) -> tuple[bool, str]:
    """Whether this fit meets the stopping rule, and the figures that say so.

    >>> import numpy as np
    >>> N = np.repeat(np.geomspace(1e4, 1e6, 4), 4); D = N * np.tile([5.0, 20, 80, 320], 4)
    >>> from orchestrator.core.planning.search.loss_law import fit_loss
    >>> law = fit_loss(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, bootstrap=20, seed=0, targets=[1e15])
    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> done, why = stop_rule(law, [1e15], SearchConfig(tolerance=100.0, loss_tolerance=100.0))
    >>> done, why.startswith("target intervals narrower than the tolerance")
    (True, True)
    """
    widths = law.widths(targets, config.level)
    if config.regret_tolerance is not None:
        regrets = law.regret_risk(targets, config.level)
        done = max(regrets) <= config.regret_tolerance and all(wn <= config.tolerance for wn, _ in widths)
        why = (f"risk of the (N*, D*) proposal below the regret tolerance ({config.regret_tolerance:.3%}, "
               f"{config.level:.0%} level) and N* intervals narrower than {config.tolerance}: "
               + "; ".join(f"C={c:.3g}: {r:.3%}, N* {wn:.3f}" for c, r, (wn, _) in zip(targets, regrets, widths)))
        return done, why
    done = bool(widths) and all(wn <= config.tolerance and wl <= config.loss_tolerance for wn, wl in widths)
    why = "target intervals narrower than the tolerance: " + "; ".join(
        f"C={c:.3g}: N* {wn:.3f}, L* {wl:.4f}" for c, (wn, wl) in zip(targets, widths))
    return done, why


def why_done(cells: Sequence[SearchCell], affordable: Callable[[SearchCell], bool]) -> str:
    """Why the search ran out of cells to open.

    >>> why_done([], lambda cell: True)
    'every cell searched'
    """
    closed = [c for c in cells if c.state == "closed"]
    if not closed:
        return "every cell searched"
    if not any(affordable(c) for c in closed):
        return "compute budget spent"
    return "every remaining cell is pruned (far from the frontier in nearly all replicates)"


def backtest_warning(why: str, bt: Optional[dict[str, Any]]) -> str:
    """The stop's reason, with a warning when the form the search used misses the held-out largest size.

    >>> backtest_warning("intervals narrow", None)
    'intervals narrow'
    """
    if bt is None or not bt["misfit"]:
        return why
    others = ", ".join(f"{k} {v:.2%}" for k, v in bt.items()
                       if k not in ("held_out_N", "cells", "noise", "form", "misfit", "better_form", bt["form"])
                       and isinstance(v, float))
    return why + (f"; WARNING: L(N, D) of {bt['form']} form misses the largest size by {bt[bt['form']]:.2%} "
                  f"in a backtest (noise {bt['noise']:.2%}; other forms: {others or 'none'}): "
                  "the N* interval assumes the form and is too narrow")
