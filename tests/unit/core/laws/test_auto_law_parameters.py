"""The selected law's own parameters: warnings name them, and intervals come from its replicates."""
from __future__ import annotations

import numpy as np

from orchestrator.core.laws.chinchilla import ChinchillaLaw
from orchestrator.core.laws.kaplan import KaplanLaw
from orchestrator.core.laws.selection import fit_auto

# Kaplan's published law (the `kaplan` world of test_law_selection) on 6 sizes x only 2 token counts.
KAPLAN = KaplanLaw(Nc=8.8e13, Dc=5.4e13, alphaN=0.076, alphaD=0.095)
N_TWO_D = np.repeat(np.geomspace(2e7, 6e8, 6), 2)
D_TWO_D = np.tile([2e9, 2e10], 6)


def _noisy(L, seed=0):
    return L * np.exp(np.random.default_rng(seed).normal(0, 0.003, L.size))


def test_design_warning_names_the_chosen_kaplan_forms_parameters():
    fit = fit_auto(N_TWO_D, D_TWO_D, _noisy(KAPLAN.predict(N_TWO_D, D_TWO_D)), bootstrap=0)
    assert fit.form == "kaplan", fit.weights
    design = [w for w in fit.warnings if "distinct D value" in w]
    assert design == ["only 2 distinct D value(s): alphaD and Dc are not identifiable (need >= 3)"]
    assert not any("beta and B" in w for w in fit.warnings)


def test_design_warning_keeps_chinchilla_names_for_a_chinchilla_form():
    law = ChinchillaLaw(E=1.7, A=4000.0, B=1200.0, alpha=0.5, beta=0.25)
    fit = fit_auto(N_TWO_D, D_TWO_D, _noisy(law.predict(N_TWO_D, D_TWO_D)), bootstrap=0,
                   forms=("chinchilla", "chinchilla-fixed-E"))
    assert any(w.startswith("only 2 distinct D value(s): beta and B are not identifiable") for w in fit.warnings)


# A full grid (6 sizes 20M-600M x 7 token multipliers 2.5-160) on a planted Chinchilla world.
SIZES = np.geomspace(2e7, 6e8, 6)
MULTS = [2.5, 5, 10, 20, 40, 80, 160]
N_GRID = np.repeat(SIZES, len(MULTS))
D_GRID = N_GRID * np.tile(MULTS, len(SIZES))
TRUTH = {"E": 1.7, "A": 4000.0, "B": 1200.0, "alpha": 0.5, "beta": 0.25}


def test_parameter_intervals_cover_the_planted_values():
    """90 % quantile intervals over 50 bootstrap replicates, 0.3 % noise, seeds 0-11: measured
    coverage E 11, A 12, B 9, alpha 12, beta 10 of 12 (nominal 10.8)."""
    law = ChinchillaLaw(**TRUTH)
    covered = {k: 0 for k in TRUTH}
    for seed in range(12):
        fit = fit_auto(N_GRID, D_GRID, _noisy(law.predict(N_GRID, D_GRID), seed), forms=("chinchilla",),
                       bootstrap=50, seed=seed)
        for k, v in TRUTH.items():
            iv = fit.intervals[k]
            assert iv["level"] == 0.9 and iv["estimate"] == fit.params[k]
            assert iv["low"] < iv["high"]
            covered[k] += iv["low"] <= v <= iv["high"]
    assert all(c >= 8 for c in covered.values()), covered


def test_parameter_intervals_reach_the_mlflow_law_metrics():
    """The chosen form's intervals are in fit.json's law.intervals, so `law_metrics` logs
    law.<param>.low/.high beside law.<param>; without replicates there are none."""
    from orchestrator.app.sweep_summary import law_metrics

    law = ChinchillaLaw(**TRUTH)
    L = _noisy(law.predict(N_GRID, D_GRID))
    fit = fit_auto(N_GRID, D_GRID, L, bootstrap=20, budgets=[1e21])
    assert fit.form == "chinchilla", fit.weights
    m = law_metrics({"law": fit.to_json()})
    for k in TRUTH:
        assert m[f"law.{k}"] == fit.params[k] and m[f"law.{k}.low"] < m[f"law.{k}.high"], (k, m)
    assert m["law.beta.low"] <= TRUTH["beta"] <= m["law.beta.high"]
    assert "1e+21" in fit.intervals["budgets"]  # the frontier's intervals stay beside them
    bare = law_metrics({"law": fit_auto(N_GRID, D_GRID, L, bootstrap=0).to_json()})
    assert "law.beta" in bare and not any(k.endswith((".low", ".high")) for k in bare)
