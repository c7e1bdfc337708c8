"""Which cell the law search opens next: the largest expected reduction of the target optimum's
uncertainty per FLOP, skipping cells far from the frontier.

The gain is the ensemble-Kalman one, Cov(q, f)² / (Var f + σ²), computed from the L(N, D) fit's
replicates (`loss_law.LossLaw`): q the log N*(C) and log L*(C) at every target, f a candidate
cell's predicted log loss; cells still being searched are conditioned on first (their results will
arrive). Weights put the effort on the targets whose intervals are still wider than the tolerance.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .config import SearchConfig
from .hparam_state import z_of
from .lattice import SearchCell
from .loss_law import LossLaw


def acquire(closed: list[SearchCell], open_cells: list[SearchCell], law: LossLaw, targets: Sequence[float],
            config: SearchConfig, *, identified: bool, noise: float, runs: float, streak: int,
            cost: Optional[Callable[[SearchCell], float]] = None) -> Optional[tuple[SearchCell, dict[str, Any]]]:
    """The closed cell with the largest expected uncertainty reduction per FLOP, and why (None: all pruned).
    `cost(cell)`: the FLOPs of a cell's run (default its lattice's largest; with WSD branching, what it
    spends from another run's checkpoint, `branches.Branches.cost`).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.lattice import cells_of
    >>> cells = cells_of(plan_grid(d), d)
    >>> import numpy as np
    >>> N = np.repeat(np.geomspace(1e4, 1e6, 4), 4); D = N * np.tile([5.0, 20, 80, 320], 4)
    >>> from orchestrator.core.planning.search.loss_law import fit_loss
    >>> law = fit_loss(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, bootstrap=20, seed=0, targets=[1e15])
    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> cell, info = acquire(cells, [], law, [1e15], SearchConfig(), identified=False, noise=0.003, runs=1.0,
    ...                      streak=0)  # not identified yet: nothing pruned
    >>> cell in cells, info["alternatives"], info["pruned"]
    (True, 3, 0)
    """
    # Pruning: in what fraction of replicates is the cell's N within prune_band of N*(its C)?
    n_star = law.frontier_samples([c.C for c in closed])["N_opt"]  # (K, J)
    logN = np.log([c.N for c in closed])
    p_near = np.mean(np.abs(logN[None, :] - np.log(n_star)) <= math.log(config.prune_band), axis=0)
    keep = (p_near >= config.prune_below) | (not identified)
    pruned = [c for c, k in zip(closed, keep) if not k]
    kept = [c for c, k in zip(closed, keep) if k]
    info_pruned = {"pruned": len(pruned),
                   "pruned_cells": [{"N": c.N, "D": c.D, "p_near": float(p)}
                                    for c, p, k in zip(closed, p_near, keep) if not k][:20]}
    if not kept:
        return None
    g = gains(kept, open_cells, law, targets, config, noise)
    flops = np.array([cost(c) if cost is not None else c.flops for c in kept])
    scores = g / (flops * runs)
    k = int(np.argmax(scores))
    why = "largest expected reduction of the target-optimum uncertainty per FLOP"
    if not scores[k] > 0:  # nothing left to learn at the weights used: take the cheapest cell
        k = 0
    elif config.transfer and streak > 0:
        # The stopping rule held on the last fit and needs `stop_streak` in a row: a confirmation,
        # which the cheapest cell near the frontier gives as well as the most informative one.
        k = int(np.argmin(flops))
        why = (f"the stopping rule held on the last fit ({streak} of {config.stop_streak}): "
               "confirm it with the cheapest cell near the frontier")
    cell = kept[k]
    order = np.argsort(-scores)
    return cell, {
        "why": why,
        "expected_gain": float(g[k]), "score": float(scores[k]), "expected_runs": runs, "cost": float(flops[k]),
        "p_near_frontier": float(p_near[closed.index(cell)]), "alternatives": len(kept),
        "runner_up": ({"N": kept[order[1]].N, "D": kept[order[1]].D, "expected_gain": float(g[order[1]])}
                      if len(kept) > 1 else None),
        **info_pruned,
    }


def gains(cands: list[SearchCell], open_cells: list[SearchCell], law: LossLaw, targets: Sequence[float],
          config: SearchConfig, noise: float) -> np.ndarray:
    """Expected reduction of Σ_q w_q·Var(q) from observing each candidate (cells being searched conditioned on).

    >>> from orchestrator.core.planning.search.loss_law import fit_loss
    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> N = np.geomspace(1e4, 1e6, 16); D = N * np.resize([5.0, 20, 80, 320], 16)
    >>> law = fit_loss(N, D, 1.8 + 480 * N**-0.34 + 2100 * D**-0.28, bootstrap=20, seed=1, targets=[1e15])
    >>> near, far = (SearchCell((n, 0), n, 20 * n, 120.0 * n * n, [1e-3], [1024], {}) for n in (3e5, 1e4))
    >>> g = gains([near, far], [], law, [1e15], SearchConfig(), noise=0.003)
    >>> g.shape, bool((g >= 0).all())
    ((2,), True)
    """
    fr = law.frontier_samples(targets)
    Q = np.concatenate([np.log(fr["N_opt"]), np.log(fr["loss_opt"])], axis=1)  # (K, 2T)
    F = law.log_predict_samples([c.N for c in cands + open_cells], [c.D for c in cands + open_cells])
    Z = winsorise(np.concatenate([Q, F], axis=1))
    Z = Z - Z.mean(axis=0)
    cov = Z.T @ Z / max(len(Z) - 1, 1)
    nq, nc = Q.shape[1], len(cands)
    sig2 = noise ** 2
    o = np.arange(nq + nc, cov.shape[0])
    if len(o):  # condition on the cells already being searched (their results will arrive)
        Soo = cov[np.ix_(o, o)] + sig2 * np.eye(len(o))
        cov = cov - cov[:, o] @ np.linalg.solve(Soo, cov[o, :])
    T = len(targets)
    z = z_of(config.level)
    tol = np.array([config.tolerance] * T + [config.loss_tolerance] * T)
    target_var = (np.maximum(tol, 1e-9) / (2 * z)) ** 2  # variance at which the interval meets the tolerance
    var_q = np.diag(cov)[:nq]
    # Only what the stopping rule asks about: with `regret_tolerance` (transfer) that is N*(C) (its
    # interval and the proposal's risk), not L*(C): a narrower L* interval stops nothing.
    asked = np.array([True] * T + [config.regret_tolerance is None] * T)
    w = np.where(asked & (var_q > target_var), 1.0 / target_var, 0.0)
    if not w.any():
        w = np.where(asked, 1.0 / np.maximum(var_q, 1e-30), 0.0)
    c_qf = cov[:nq, nq:nq + nc]  # (2T, J)
    v_f = np.diag(cov)[nq:nq + nc]
    return (w[:, None] * c_qf ** 2).sum(axis=0) / (v_f + sig2)


def expected_runs(cells: Sequence[SearchCell], config: SearchConfig) -> float:
    """Runs a newly opened cell is expected to cost: 1 with transfer, else the mean of the searched cells.

    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> expected_runs([], SearchConfig(strategy="transfer")), expected_runs([], SearchConfig())
    (1.0, 5.0)
    """
    if config.transfer:
        return 1.0  # every cell after the initial design runs once
    done = [c.runs for c in cells if c.state == "resolved" and c.start_from not in ("coarse scan", "resumed")]
    base = 5.0 if config.neighbourhood == "cross" else 9.0
    return float(np.mean(done)) if done else base


def winsorise(Z: np.ndarray, q: float = 5.0) -> np.ndarray:
    """Clip each column to its [q, 100 − q] percentiles: a few wild replicates must not set the covariance.

    >>> winsorise(np.array([[0.0], [1.0], [2.0], [100.0]]), 25.0).ravel().tolist()
    [0.75, 1.0, 2.0, 26.5]
    """
    lo, hi = np.percentile(Z, [q, 100 - q], axis=0)
    return np.clip(Z, lo, hi)
