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
