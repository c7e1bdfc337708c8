"""Transfer's law checks near the target: a bracket of runs around the learned (lr*, batch*) at the
largest affordable size, the only direct test of laws learned on the smallest sizes and
extrapolated decades. A check whose law point is not the best of its bracket (beyond the noise of a
loss) found the law wrong: the cell then enters the laws and another check follows.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

from ...cells import in_cell
from ..protocol import Wait
from ..design import Design, plan_trial
from ..trial import PlannedTrial
from ...resources import ResourceError
from .config import SearchConfig
from .hparam_state import HparamLaws
from .lattice import Point, SearchCell, cell_optimum, min_batch
from .loss_law import LossLaw


def next_check(cells: Sequence[SearchCell], closed: list[SearchCell], law: LossLaw, hparams: HparamLaws,
               checks: Sequence[dict[str, Any]], config: SearchConfig, grid_flops: float,
               step: float) -> Union[tuple[SearchCell, dict[str, Any]], Wait, None]:
    """The next law check, Wait while one is being searched, or None (no check due or affordable).

    A check is due while fewer than `law_checks` were made and either none was made yet or the last
    one found the law wrong.

    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> next_check([], [], None, None, [], SearchConfig(law_checks=0), 1e15, 2.0) is None  # no checks asked for
    True
    """
    if any(c.state == "open" and c.open_info.get("check") for c in cells):
        return Wait("a law check is being searched: later cells run at the laws it tests")
    if len(checks) >= config.law_checks:
        return None
    if checks and not checks[-1]["misfit"]:
        return None
    # 5 runs: the law's point and its lr and batch neighbours (the certificate of a local minimum).
    cap = config.check_budget * grid_flops
    est = law.law.frontier([c.C for c in closed])["N_opt"]
    by_size: dict[int, list[tuple[float, SearchCell]]] = {}
    for c, n_opt in zip(closed, est):
        if 5 * c.flops <= cap:
            by_size.setdefault(c.key[0], []).append((abs(math.log(c.N / float(n_opt))), c))
    if not by_size:
        return None
    size = max(by_size)
    # The check tests the laws' reach in N: any cell of that size near the fitted frontier (N within
    # `prune_band` of N*(its C)) will do, so the cheapest of them; else the one nearest the frontier.
    near = [x for x in by_size[size] if x[0] <= math.log(config.prune_band)]
    dist, cell = (min(near, key=lambda x: (x[1].flops, x[0])) if near
                  else min(by_size[size], key=lambda x: (x[0], x[1].flops)))
    lr, batch = hparams.law(cell.N, cell.D)
    edge = hparams.edge_ if hparams.edge_ is not None else cell.N
    return cell, {"why": (f"law check {len(checks) + 1}: the largest size whose bracket costs ≤ "
                          f"{config.check_budget:.1%} of the full grid, its cheapest cell near the fitted "
                          f"frontier (N/N*(C) = {math.exp(dist):.2f}); tests lr*={lr:.3g}, batch*={batch:.0f} "
                          f"extrapolated from the searched cells"
                          + ("" if not checks else "; the last check found the law wrong")),
                  "check": True, "law_lr": lr, "law_batch": batch, "alternatives": len(by_size[size]),
                  "reach": max(math.log(cell.N / edge), 0.5 * math.log(step))}


def lr_step(design: Design) -> float:
    """The design's learning-rate resolution: the geometric step of its lr lattice (≥ 1.5).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> round(lr_step(d), 3)
    3.0
    """
    lrs = design.lrs
    if len(lrs) < 2:
        return 2.0
    return max(1.5, float(math.exp(math.log(lrs[-1] / lrs[0]) / (len(lrs) - 1))))


def check_lattice(design: Design, cell: SearchCell, lr: float, batch: float, config: SearchConfig,
                  step: float) -> Optional[dict[Point, PlannedTrial]]:
    """Replace the check cell's lattice by one centred on the law's point (lr × step^(−2..2), batch ×
    ladder^(−1..1)) and queue the point and its cross; the cell search then walks to the lattice's
    local minimum, so a wrong law is followed as far as the lattice reaches. Returns the new trials
    (None: the law's point does not fit the resources; the cell is left as it was).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.lattice import cells_of
    >>> cells = cells_of(plan_grid(d), d)
    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> trials = check_lattice(d, cells[0], 3e-3, 1024, SearchConfig(), 2.0)
    >>> len(trials), cells[0].start, cells[0].trials[cells[0].start].lr
    (15, (2, 1), 0.003)
    """
    seq, lo = design.seq_len, min_batch(design)
    f = config.batch_ladder
    lrs = [float(f"{lr * step ** i:.4g}") for i in range(-2, 3)]
    bs = sorted({max(lo, int(round(batch * f ** j / seq)) * seq) for j in (-1, 0, 1)})
    any_t = next(iter(cell.trials.values()))
    trials: dict[Point, PlannedTrial] = {}
    for i, x in enumerate(lrs):
        for j, b in enumerate(bs):
            try:
                t = plan_trial(design, any_t.n_target, cell.key[1], x, b, any_t.seed)
            except ResourceError:
                continue
            if in_cell(t.D, any_t.cell):
                trials[(i, j)] = t
    jc = min(range(len(bs)), key=lambda j: abs(math.log(bs[j] / batch)))
    centre = (2, jc)
    if centre not in trials:
        cell.open_info = {**cell.open_info, "check_refused": "the law's point does not fit the resources"}
        return None
    cell.lrs, cell.batches, cell.trials = lrs, bs, trials
    cell.flops = max(t.flops for t in trials.values())
    cell.start = centre
    cell.queue = [centre] + cell.neighbours(centre, config.neighbourhood == "square")
    cell.why[centre] = f"law check: the learned point lr*={lr:.3g}, batch*={batch:.0f} at a large size"
    for q in cell.queue[1:]:
        cell.why[q] = (f"law check: bracket of the law's point (lr ×{step:.2g}^±1, batch ×{f:.2g}^±1); "
                       "the law is wrong here if this beats it")
    return trials


def check_record(cell: SearchCell, noise: float) -> dict[str, Any]:
    """What a finished law check found: where the cell's optimum is against the law's point.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.lattice import cells_of
    >>> cells = cells_of(plan_grid(d), d)
    >>> c = cells[0]; c.start = (1, 0); c.open_info = {"law_lr": 3e-3, "law_batch": 1024}
    >>> c.loss.update({(0, 0): 3.2, (1, 0): 3.0, (2, 0): 3.1})
    >>> check_record(c, noise=0.003)["misfit"]
    False
    """
    info = cell.open_info
    rec: dict[str, Any] = {"N": cell.N, "D": cell.D, "runs": cell.runs, "law_lr": info.get("law_lr"),
                           "law_batch": info.get("law_batch"), "reach": info.get("reach"), "misfit": False}
    b = cell.best()
    if b is not None and cell.start is not None:
        x, y, _, _ = cell_optimum(cell)
        rec.update(best_lr=cell.trials[b].lr, best_batch=cell.trials[b].batch, best_loss=cell.loss[b],
                   optimum_lr=math.exp(x), optimum_batch=math.exp(y),
                   law_point_loss=cell.loss.get(cell.start))
        # The law is wrong here when a bracket point beat its point by more than the noise of a loss
        # (a flat batch axis lets noise pick a neighbour: that is no evidence against the law).
        at_law = cell.loss.get(cell.start)
        rec["misfit"] = b != cell.start and (at_law is None or at_law / cell.loss[b] - 1.0 > noise)
    rec["why"] = ((f"law check at N={cell.N:.3g}, D={cell.D:.3g}: the best point (lr={rec.get('best_lr', 0):.3g}, "
                   f"batch={rec.get('best_batch')}) is not the law's (lr={rec['law_lr']:.3g}, "
                   f"batch={rec['law_batch']:.0f}): the laws are refitted with this cell, and another check follows"
                   if rec["misfit"] else
                   f"law check at N={cell.N:.3g}, D={cell.D:.3g}: the law's point is the best of its bracket"))
    return rec
