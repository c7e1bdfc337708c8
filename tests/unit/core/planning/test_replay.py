"""Replay mode: table -> spec + lookup, any planner against it, and the Step-Law per-cell target."""
from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.core.planning import WAIT
from orchestrator.config.planners import GridPlanner
from orchestrator.app.replay import replay, steplaw_replay, table_replay
from orchestrator.core.planning.search.config import SearchConfig
from orchestrator.config.planners import LawGuidedPlanner


@pytest.fixture(scope="module")
def steplaw():
    return steplaw_replay()


def test_steplaw_table_maps_every_run(steplaw):
    assert len(steplaw.rows) == 1911
    assert len(steplaw.candidates) == 1911  # every recorded run is a candidate, each exactly once
    assert len({t.trial_id for t in steplaw.candidates}) == 1911
    assert len(steplaw.cells()) == 17
    # The lookup returns the table's own loss for the row a candidate stands for.
    for t in steplaw.candidates[::37]:
        row = steplaw.row_of(t)
        assert (t.N, t.D, t.batch) == (row["N"], row["D"], row["batch"])
        assert abs(math.log(t.lr / row["lr"])) < 1e-9
        assert steplaw.lookup(t)["eval_loss"] == row["loss"]
        assert t.flops == 6.0 * row["N"] * row["D"]


def test_law_search_solves_every_steplaw_cell_with_a_quarter_of_the_runs(steplaw):
    budget = len(steplaw.rows) // 4
    cfg = SearchConfig(prune_below=0.0, tolerance=0.0, loss_tolerance=0.0, max_trials=budget)
    pl = LawGuidedPlanner(steplaw.spec, seed=0, config=cfg, candidates=steplaw.candidates)
    res = replay(pl, steplaw.lookup)
    assert res.n_trials <= budget
    best = {(c["N"], c["D"]): c["best_loss"] for c in steplaw.cells()}
    picks: dict = {}
    for row in res.table():  # the result table matches the lookup row by row
        assert row["loss"] == steplaw.lookup(next(t for t in res.trials if t.trial_id == row["trial_id"]))["eval_loss"]
        key = (row["N"], row["D"])
        picks[key] = min(picks.get(key, math.inf), row["loss"])
    gaps = {k: picks.get(k, math.inf) / b - 1 for k, b in best.items()}
    assert max(gaps.values()) <= 0.0025, gaps  # issue: every cell within 0.25 % of its best
    # Measured: 132 runs (6.9 % of the grid), worst cell 0.13 %.
    assert res.n_trials <= 0.1 * len(steplaw.rows)


def _small_table():
    """A complete 2 x 2 x 3 x 2 grid with a known loss per run (two diverged)."""
    cols = {k: [] for k in ("N", "D", "lr", "batch", "loss")}
    for n in (1.0e5, 4.0e5):
        for d in (2.0e6, 8.0e6):
            for lr in (1e-3, 3e-3, 1e-2):
                for b in (4096, 16384):
                    loss = 2 + 1e3 / n ** 0.5 + 1e3 / d ** 0.5 + (math.log(lr / 3e-3)) ** 2 * 0.01 + b * 1e-7
                    cols["N"].append(n), cols["D"].append(d), cols["lr"].append(lr), cols["batch"].append(b)
                    cols["loss"].append(math.nan if (lr == 1e-2 and n == 4.0e5 and b == 4096) else loss)
    return {k: np.array(v) for k, v in cols.items()}


def test_grid_planner_replays_through_nearest_rows():
    tr = table_replay(_small_table(), seq_len=128)
    grid = GridPlanner(tr.spec)
    # The family realises N only approximately; the lookup maps by the requested size and nearest D/lr.
    assert any(t.N != tr.row_of(t)["N"] for t in grid.trials)
    res = replay(grid, tr.lookup, concurrency=3)
    assert res.n_trials == 24 and res.stopped.startswith("every grid trial handed out")
    assert res.compute == pytest.approx(sum(t.flops for t in grid.trials))
    table = res.table()
    assert sum(r["status"] == "diverged" for r in table) == 2
    for t in res.trials:
        r = tr.row_of(t)
        got = res.results[t.trial_id]["eval_loss"]
        assert (math.isnan(got) and r["diverged"]) or got == r["loss"]


def test_replay_refuses_a_planner_that_waits_on_nothing():
    class Stuck:
        def next_trial(self):
            return WAIT

        def observe(self, trial_id, result):
            pass

    tr = table_replay(_small_table(), seq_len=128)
    with pytest.raises(RuntimeError, match="WAIT"):
        replay(Stuck(), tr.lookup)
