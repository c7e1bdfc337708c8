"""Transfer's law point: a cell after the initial design runs once, at the (lr*, batch*) the learned
laws predict for it, planned off the spec's lattice (a learned point, not a lattice neighbour).
Small models are cheap, so learning the laws there and transferring them up costs a fraction of
searching every cell; the cell's lattice stays the fallback should that run diverge.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ..design import Design, plan_grid, plan_trial
from ..trial import PlannedTrial
from ...resources import ResourceError
from .config import SearchConfig
from .lattice import LAW_POINT, SearchCell, batch_ladder, fits_resources, min_batch


def candidate_trials(design: Design, config: SearchConfig) -> list[PlannedTrial]:
    """The search's candidates: the design's grid; with transfer, the initial design's sizes on a batch
    lattice extended by `batch_ladder` (each cell's batch optimum bracketed, not only its lr), the
    others on the design's batches (their lattice is only a fallback: they run at the learned point).
    Never as the grid's WSD trunks and branches: a searched cell runs whatever points its walk needs,
    so a grid branch's trunk may never run (`branches.py` plans the search's own).

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.config import SearchConfig
    >>> len(candidate_trials(d, SearchConfig())) == len(plan_grid(d))  # law: the grid
    True
    """
    if design.branch:  # the grid's trunks and branches assume every trial runs: the search plans its own
        design = replace(design, branch=False)
    if not config.transfer:
        return plan_grid(design)
    init = set(sorted(design.sizes)[: config.init_sizes])
    ladder = [b for b in batch_ladder(design, config.batch_ladder) if fits_resources(design, init, b)]
    return [t for t in plan_grid(design, ladder) if t.n_target in init] + \
        [t for t in plan_grid(design) if t.n_target not in init]


def law_point(design: Design, cell: SearchCell, lr: float, batch: float, source: str) -> Optional[PlannedTrial]:
    """Plan the cell's run at (lr, batch) (batch in whole sequences) and queue it as the cell's only
    point; None when it does not fit the cluster's resources (the cell is searched on its lattice,
    whose shapes were checked before launch). The caller adopts the trial into its book.

    >>> from orchestrator.core.planning.design import Design, plan_grid
    >>> d = Design("gpt", 64, (20000, 80000), ((640000, 1280000), (1280000,)), (1e-3, 3e-3, 9e-3), (1024, 2048), (0,))
    >>> from orchestrator.core.planning.search.lattice import cells_of
    >>> cells = cells_of(plan_grid(d), d)
    >>> t = law_point(d, cells[0], 2e-3, 1024, "test")
    >>> t.lr, t.batch, cells[0].queue
    (0.002, 1024, [(-1, -1)])
    """
    seq = design.seq_len
    b = max(min_batch(design), int(round(batch / seq)) * seq)
    any_t = next(iter(cell.trials.values()))
    try:
        t = plan_trial(design, any_t.n_target, cell.key[1], float(f"{lr:.4g}"), b, any_t.seed)
    except ResourceError as exc:
        cell.open_info = {**cell.open_info, "law_point_refused": str(exc)}
        cell.start_from += f" (the law's batch {b} does not fit: lattice search)"
        return None
    cell.start_from = "law point (" + source + ")"
    cell.queue = [LAW_POINT]
    cell.why[LAW_POINT] = (f"transfer: the learned law's point lr*={lr:.3g}, batch*={batch:.0f} "
                           f"(run at batch {b}; {source})")
    return t
