"""The search's pure modules: their docstring examples, and the online L(N, D) fit choosing its form
by backtest on planted worlds (a Kaplan-form world is not fitted as Chinchilla)."""
from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest

from orchestrator.core.planning.search.loss_law import backtest_by_size, fit_loss
from trainers.worlds import load_world

MODULES = ("orchestrator.core.planning", "orchestrator.core.planning.search.config", "orchestrator.core.planning.search.hparam_state",
           "orchestrator.core.planning.search.acquisition", "orchestrator.core.planning.search.loss_law")


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    assert doctest.testmod(importlib.import_module(name)).failed == 0


def _cells(world, target=1e22, seed=0, noise=0.002):
    """The benchmark's cells (5 sizes x 5 token ratios below target/100) with multiplicative noise."""
    n_max = math.sqrt(target / 100 / (6 * 80))
    N, D = (np.array(x) for x in zip(*[(n, r * n) for n in np.geomspace(n_max / 100, n_max, 5)
                                       for r in (5, 10, 20, 40, 80)]))
    L = np.asarray(world.loss_star(N, D), float) * np.exp(np.random.default_rng(seed).normal(0, noise, N.size))
    return N, D, L


def test_replicates_mix_the_forms_by_weight():
    N, D, L = _cells(load_world("chinchilla"))
    law = fit_loss(N, D, L, bootstrap=40, seed=0, targets=[1e22, 1e23])
    fr = law.frontier_samples([1e22, 1e23])
    assert fr["N_opt"].shape == (40, 2) and np.all(np.isfinite(fr["loss_opt"]))
    F = law.log_predict_samples(N[:3], D[:3])
    assert F.shape == (40, 3)
    weights = law.fit.weights
    assert sum(len(r) for _, r in law._parts) == 40
    for f, rows in law._parts:  # each weighted form's share of the rows follows its weight
        assert abs(len(rows) / 40 - weights[f.name]) <= 1 / 40 + 1e-9
    # every replicate's regret at the mixture's own optimum is ≥ 0 up to the frontier search's precision
    assert min(law.regret_risk([1e22], 0.05)) > -1e-6


def test_kaplan_world_is_not_fitted_as_chinchilla():
    """On the kaplan world's cells the Chinchilla form misses the held-out largest size by more than twice
    the noise; the online fit finds the world's own form, Kaplan + E, a candidate since 6 Dec 2026
    (measured: weight 1.00, backtest 0.15 % against Chinchilla's 0.74 %; before it, Chinchilla 0.5 and
    equal-exponent 0.5 with a misfit flag), and its N*(1e22) is nearer the truth (x1.00 vs Chinchilla's x1.38)."""
    world = load_world("kaplan")
    N, D, L = _cells(world)
    bt = backtest_by_size(N, D, L, 0.003)
    assert bt["chinchilla"] > 2 * 0.003 and bt["form"] == "kaplan-E" and not bt["misfit"]
    auto = fit_loss(N, D, L, bootstrap=20, seed=0, targets=[1e22])
    chin = fit_loss(N, D, L, bootstrap=20, seed=0, targets=[1e22], law="chinchilla")
    n_true = world.optimum(1e22)["N"]
    err = {k: abs(math.log(f.law.frontier([1e22])["N_opt"][0] / n_true)) for k, f in (("auto", auto), ("chin", chin))}
    assert auto.fit.weights["chinchilla"] < 0.9 and err["auto"] < err["chin"], (auto.fit.weights, err)
