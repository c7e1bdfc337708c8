"""The final L(N, D) fit counts a search's WSD branches as the search does: corrected to their cell's law
point (`orchestrator.core.planning.search.advice.SearchRule.corrected_loss` -> `LawGuidedPlanner.loss_as_fitted` ->
`branches.corrected_loss`), on a planted world where the uncorrected fit is measurably biased."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from orchestrator.core.proposals import fit_and_propose
from orchestrator.core.planning.search.advice import SearchRule
from orchestrator.core.planning.search.lattice import LAW_POINT
from orchestrator.core.planning.search.planner import LawGuidedPlanner
from trainers.worlds import load_world

WORLD = load_world("chinchilla").without_noise()
TARGET = 1e22
NOISE = 0.003  # the search's default `search.noise`: the most a branch's offset may cost


class _Search:
    """The parts of a search the rule reads: its laws (here the truth's) and its book of cells; the
    correction itself is the planner's own method."""

    loss_as_fitted = LawGuidedPlanner.loss_as_fitted

    def __init__(self, where):
        self.book = SimpleNamespace(where=where)

    def predict_hparams(self, N, D):
        return float(WORLD.lr_star(N, D)), float(WORLD.batch_star(D))

    def hparam_intervals(self, N, D, level=0.9):
        return None


def _planted():
    """The benchmark's cells at C 1e22: each size's two shortest budgets run at their own (lr*, batch*);
    the three longest as WSD branches at an lr above their lr* that costs the world's bowl exactly the
    noise the search allows (its largest admissible offset). Losses are the world's noise-free runs."""
    n_max = math.sqrt(TARGET / (100 * 6 * 80))
    points, where = [], {}
    for i, n in enumerate(np.geomspace(n_max / 100, n_max, 5)):
        for j, k in enumerate((5, 10, 20, 40, 80)):
            d = float(n * k)
            lr, batch = float(WORLD.lr_star(n, d)), float(WORLD.batch_star(d))
            tid = f"n{i}-d{j}"
            if j >= 2:
                lr *= math.exp(math.sqrt(NOISE / WORLD.bowl.lr_width))  # the world's bowl: w·u² = NOISE
                pen = float(np.log(WORLD.bowl_factor(n, d, lr, batch)))
                where[tid] = (SimpleNamespace(trials={LAW_POINT: SimpleNamespace(branch_of=f"n{i}-d0")},
                                              open_info={"bowl_penalty": pen}), LAW_POINT)
            points.append({"trial_id": tid, "N": float(n), "D": d, "lr": lr, "batch": batch,
                           "loss": float(WORLD.loss_star(n, d) * WORLD.bowl_factor(n, d, lr, batch))})
    return points, _Search(where)


def _errors(fit):
    p, o = fit.proposals[0], WORLD.optimum(TARGET)
    return abs(p["N"] / o["N"] - 1.0), abs(p["predicted_loss"] / o["loss"] - 1.0)


def test_the_planted_branches_cost_what_the_search_allows():
    points, search = _planted()
    pens = [c.open_info["bowl_penalty"] for c, _ in search.book.where.values()]
    assert len(pens) == 15 and all(p == pytest.approx(NOISE, rel=1e-6) for p in pens)


def test_the_final_fit_is_unbiased_only_with_the_search_correction():
    points, search = _planted()
    rule = SearchRule(search)
    raw = fit_and_propose(points, [TARGET], law="chinchilla", bootstrap=0, corrected_loss=lambda p: p["loss"])
    fixed = fit_and_propose(points, [TARGET], law="chinchilla", bootstrap=0, hparams=rule,
                            corrected_loss=rule.corrected_loss)  # the search's own correction
    n_raw, l_raw = _errors(raw)
    n_fix, l_fix = _errors(fixed)
    # uncorrected: the longer budgets look worse than they are, read as a higher floor E; the proposal's
    # N* comes out 6-7 % too large and its predicted loss 0.19 % too high
    assert n_raw > 0.05 and l_raw > 0.001
    assert raw.fit.params["E"] > WORLD.loss.E + 0.002
    assert n_fix < 1e-3 and l_fix < 1e-4
    assert fixed.fit.params["E"] == pytest.approx(WORLD.loss.E, abs=1e-4)
    ratios = [f["loss"] / r["loss"] for f, r in zip(fixed.cells, raw.cells)]
    assert sorted(ratios) == pytest.approx([math.exp(-NOISE)] * 15 + [1.0] * 10)
    assert any("15 WSD branch loss(es) corrected" in w for w in fixed.warnings)
    # proposals read lr and batch from the search's rule
    p = fixed.proposals[0]
    assert (p["lr"], p["batch"]) == search.predict_hparams(p["N"], p["D"])


def test_runs_the_search_did_not_branch_are_left_alone():
    points, search = _planted()
    rule = SearchRule(search)
    plain = [p for p in points if p["trial_id"] not in search.book.where]
    assert all(rule.corrected_loss(p) == p["loss"] for p in plain)
    assert rule.corrected_loss({"loss": 3.0}) == 3.0  # no trial id: nothing to look up
    a = fit_and_propose(plain, [TARGET], law="chinchilla", bootstrap=0, hparams=rule, corrected_loss=rule.corrected_loss)
    b = fit_and_propose(plain, [TARGET], law="chinchilla", bootstrap=0)
    assert a.fit.params == b.fit.params and not any("corrected" in w for w in a.warnings)
