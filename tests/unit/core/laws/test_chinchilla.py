"""Chinchilla law: golden fit on Epoch's extraction, frontier, planted truth, refit, warnings."""
from pathlib import Path

import numpy as np
import pytest

from orchestrator.core.laws.chinchilla import ChinchillaFit, ChinchillaLaw, fit_chinchilla, refit
from orchestrator.core.laws.table import read_table

DATA = Path(__file__).parents[3] / "data" / "chinchilla_epoch" / "svg_extracted_data.csv"
REFERENCE = {"A": 477.8, "B": 2143.9, "E": 1.8172, "alpha": 0.3473, "beta": 0.3672}
TRUTH = ChinchillaLaw(E=1.8172, A=477.8, B=2143.9, alpha=0.3473, beta=0.3672)


def chinchilla_points():
    t = read_table(DATA)
    N, C, L = t["Model Size"], t["Training FLOP"], t["loss"]
    keep = np.sort(np.argsort(L, kind="stable")[: len(L) - 5])  # drop the 5 highest losses
    return N[keep], C[keep] / (6 * N[keep]), L[keep]


@pytest.fixture(scope="module")
def golden() -> ChinchillaFit:
    N, D, L = chinchilla_points()
    return fit_chinchilla(N, D, L)


def test_golden_epoch_replication(golden):
    assert golden.result.n_points == 240
    assert golden.objective <= 1.01828e-3
    for name, ref in REFERENCE.items():
        assert abs(golden.params[name] / ref - 1) < 0.005, (name, golden.params[name])
    assert golden.warnings == []


def test_golden_is_deterministic(golden):
    N, D, L = chinchilla_points()
    again = fit_chinchilla(N, D, L)
    assert again.params == golden.params
    assert again.objective == golden.objective


def test_hoffmann_parameters_are_rejected_by_the_data(golden):
    # Hoffmann et al.'s published law fits these points far worse than our optimum.
    from orchestrator.core.laws import varpro

    N, D, L = chinchilla_points()
    p = varpro.Problem.build(N, D, L)
    hoffmann = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    f_h, _ = varpro.objective(varpro.from_natural(hoffmann, p), p)
    assert f_h > 3 * golden.objective


def test_frontier_closed_form_matches_numeric():
    C = np.array([1e20, 1e22, 1e24])
    closed = TRUTH.frontier(C)
    numeric = TRUTH.frontier(C, flops=lambda n, d: 6.0 * n * d)
    for key in closed:
        np.testing.assert_allclose(numeric[key], closed[key], rtol=1e-5)
    # Closed-form check of the optimum: dL/dN = 0 along N*D = C/6.
    n, d = closed["N_opt"], closed["D_opt"]
    np.testing.assert_allclose(TRUTH.alpha * TRUTH.A * n ** -TRUTH.alpha, TRUTH.beta * TRUTH.B * d ** -TRUTH.beta, rtol=1e-10)
    # A per-token FLOP overhead (attention, embeddings) makes tokens dearer: the optimum moves to larger N,
    # stays on the budget, and beats its neighbours on the same iso-FLOP curve.
    flops = lambda n, d: 6.0 * n * d + 6.0 * 2e8 * d  # noqa: E731
    exact = TRUTH.frontier(C, flops=flops)
    assert np.all(exact["N_opt"] > closed["N_opt"])
    np.testing.assert_allclose(flops(exact["N_opt"], exact["D_opt"]), C, rtol=1e-9)
    for scale in (0.9, 1.1):
        n2 = exact["N_opt"] * scale
        d2 = C / (6.0 * (n2 + 2e8))
        assert np.all(TRUTH.predict(n2, d2) > exact["loss_opt"])


def _planted(seed: int, sigma: float = 0.002):
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(3e7, 3e9, 6), 5)
    D = N * np.tile([5.0, 10, 20, 40, 80], 6)
    L = TRUTH.predict(N, D) * np.exp(rng.normal(0, sigma, len(N)))
    return N, D, L


def test_planted_truth_recovered():
    for seed in range(5):
        fit = fit_chinchilla(*_planted(seed))
        assert abs(fit.params["alpha"] - TRUTH.alpha) < 0.05
        assert abs(fit.params["beta"] - TRUTH.beta) < 0.05
        assert abs(fit.params["E"] - TRUTH.E) < 0.1
        n_hat = fit.law.frontier(1e23)["N_opt"][0]
        assert abs(np.log(n_hat / TRUTH.frontier(1e23)["N_opt"][0])) < np.log(1.6)


def test_noise_free_planted_truth_is_exact():
    N, D, _ = _planted(0)
    fit = fit_chinchilla(N, D, TRUTH.predict(N, D))
    for name, value in TRUTH.params.items():
        assert abs(fit.params[name] / value - 1) < 1e-4, name


def test_asymmetric_loss_fits_below_the_points():
    N, D, L = _planted(1, sigma=0.01)
    sym = fit_chinchilla(N, D, L)
    asym = fit_chinchilla(N, D, L, loss_fn="asymmetric")
    over = lambda f: np.mean(f.law.predict(N, D) > L)  # noqa: E731
    assert over(asym) < over(sym)
    assert asym.result.loss == "asymmetric"


def test_refit_warm_start_matches_global_fit():
    N, D, L = _planted(2)
    first = fit_chinchilla(N[:-1], D[:-1], L[:-1])
    warm = refit(first, N, D, L)
    full = fit_chinchilla(N, D, L)
    assert warm.result.extra["search"] == "warm"
    assert warm.objective <= full.objective * (1 + 1e-6)
    for name in full.params:
        assert abs(warm.params[name] / full.params[name] - 1) < 1e-3


def test_refit_falls_back_to_global_search_when_data_grew():
    N, D, L = _planted(3)
    bad_start = {"E": 0.5, "A": 10.0, "B": 10.0, "alpha": 1.9, "beta": 0.05}
    fit = refit(bad_start, N, D, L)
    assert fit.result.extra["search"].startswith("global")
    assert abs(fit.params["alpha"] - TRUTH.alpha) < 0.05


def test_warning_when_tokens_per_param_is_constant():
    N = np.geomspace(1e7, 1e9, 12)
    D = 20 * N
    fit = fit_chinchilla(N, D, TRUTH.predict(N, D))
    assert any("proportional" in w for w in fit.warnings)


def test_warning_when_too_few_model_sizes():
    N = np.repeat([1e8, 1e9], 6)
    D = N * np.tile([5.0, 10, 20, 40, 80, 160], 2)
    fit = fit_chinchilla(N, D, TRUTH.predict(N, D))
    assert any("distinct N" in w for w in fit.warnings)


def test_warning_when_E_pinned():
    # Losses that keep falling as a pure power law: E runs to a bound.
    N = np.repeat(np.geomspace(1e7, 1e9, 5), 4)
    D = N * np.tile([5.0, 20, 80, 320], 5)
    L = 50 * N**-0.2 + 40 * D**-0.15
    fit = fit_chinchilla(N, D, L)
    assert any("E is pinned" in w for w in fit.warnings)


def test_bad_inputs_rejected():
    with pytest.raises(ValueError, match="non-positive"):
        fit_chinchilla([1e8, -1, 1e9, 2e9, 3e9, 4e9], [1e9] * 6, [3.0] * 6)
    with pytest.raises(ValueError, match="parameters"):
        fit_chinchilla([1e8, 2e8, 3e8], [1e9, 2e9, 3e9], [3.0, 2.9, 2.8])
    with pytest.raises(ValueError, match="NaN"):
        fit_chinchilla([1e8, np.nan, 3e8, 4e8, 5e8, 6e8], [1e9] * 6, [3.0] * 6)
