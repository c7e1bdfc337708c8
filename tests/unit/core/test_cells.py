"""One definition of a cell: every component sees the 36 nominal (N, D) cells of examples/simulated-law.yaml."""
from __future__ import annotations

import doctest
import math
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core import cells as cells_module
from orchestrator.core.cells import Cell, assign_cells, best_per_cell, cell_of
from orchestrator.config.trials import plan_grid, trial_config
from orchestrator.config.planners import make_planner
from orchestrator.core.proposals import best_cells
from orchestrator.config.pruning import trial_meta
from orchestrator.config.spec import load_spec

SPEC = Path(__file__).resolve().parents[3] / "examples" / "simulated-law.yaml"
N_CELLS = 6 * 6  # 6 sizes x 6 tokens-per-parameter ratios


@pytest.fixture(scope="module")
def grid():
    spec = load_spec(SPEC)
    return spec, plan_grid(spec)


def test_doctests():
    assert doctest.testmod(cells_module).failed == 0


def test_grid_rounding_splits_exact_D(grid):
    """The bug this module fixes: whole-batch rounding gives one nominal cell many exact D values."""
    _, trials = grid
    assert len({(t.N, t.D) for t in trials}) > N_CELLS
    assert len({t.cell for t in trials}) == N_CELLS


def test_every_component_sees_36_cells(grid):
    spec, trials = grid
    records = [t.record() for t in trials]
    assert len(set(assign_cells(records))) == N_CELLS
    # the law-guided search's cells
    assert len(make_planner(spec).cells) == N_CELLS
    # the pruner's cell keys (the controller passes the planned cell's D through Tune's config)
    metas = {trial_meta(trial_config(spec, t, None, None), cell_D=t.cell.D).cell() for t in trials}
    assert len(metas) == N_CELLS
    # the final fit's points and the proposals' cells: one best tuned run per cell
    rng = np.random.default_rng(0)
    points = [{**r, "loss": 3.0 + rng.random()} for r in records]
    assert len(best_cells(points)) == N_CELLS


def test_best_run_is_tuned_not_rounded_up(grid):
    """Within a cell, a run that rounding pushed to clearly more tokens cannot be the cell's point."""
    _, trials = grid
    cell = min({t.cell for t in trials}, key=lambda c: (c.N, c.D))
    runs = [t.record() for t in trials if t.cell == cell and t.seed == trials[0].seed]
    assert max(r["D"] for r in runs) > 1.5 * cell.D  # the smallest cell at the largest batch: 1 step
    # make the over-rounded runs look best: they must still not be chosen
    points = [{**r, "loss": 2.0 if r["D"] > 1.1 * cell.D else 3.0 + 0.01 * i} for i, r in enumerate(runs)]
    best = best_per_cell(points)
    assert len(best) == 1 and best[0]["D"] <= 1.1 * cell.D and best[0]["loss"] == pytest.approx(3.0, abs=0.5)


def test_seed_mean_and_legacy_rows():
    rows = [{"N": 10, "D": 1000, "lr": 1e-3, "batch": 8, "loss": 3.0},
            {"N": 10, "D": 1000, "lr": 1e-3, "batch": 8, "loss": 3.4},  # seed 2: mean 3.2
            {"N": 10, "D": 1012, "lr": 3e-3, "batch": 16, "loss": 3.1},  # rounding: same cell
            {"N": 10, "D": 2000, "lr": 3e-3, "batch": 16, "loss": 2.9}]
    best = best_per_cell(rows)
    assert [(b["cell_D"], b["lr"], b["n_seeds"]) for b in best] == [(1000.0, 3e-3, 1), (2000.0, 3e-3, 1)]
    assert cell_of({"N": 10, "D": 1012, "D_nominal": 1000}) == Cell(10.0, 1000.0)
    assert math.isclose(Cell(10.0, 1000.0).C, 6e4)
