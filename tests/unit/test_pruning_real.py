"""The pruner on real recorded curves (tests/data/lrsweep, benchmarks.pruning_real): replayed as a
sweep runs them, it never stops the eventual winner of an (N, D) cell, and it does save compute."""
from __future__ import annotations

import math

from benchmarks.pruning import OurPruner, replay, score
from benchmarks.pruning_real import load_sweep
from orchestrator.core.pruning import RULES, PruneConfig, Pruner


def test_recorded_sweep_is_whole():
    trials = load_sweep()
    assert len(trials) == 56 and len({t.cell for t in trials}) == 4
    assert all(math.isfinite(t.final) for t in trials)  # every recorded run reached its planned steps
    assert [t.config.n_params for t in trials[:14]] == [20000] * 14  # cheapest first


def test_real_sweep_never_loses_a_cell_winner():
    # The divergence and paired rules (the law rule's curve fits are benchmarks.pruning_real's job):
    # every cell's winner runs to its end; the hopeless runs are stopped early.
    trials = load_sweep()
    method = OurPruner()
    config = PruneConfig()
    method.pruner = Pruner(config, rules=[RULES[n](config, None) for n in ("divergence", "paired")])
    res = score(trials, replay(trials, method, concurrency=6))
    assert res["cells"] == 4 and res["winners_lost_cell"] == 0
    assert res["compute_saved"] > 0.1 and res["stopped"] >= 10
